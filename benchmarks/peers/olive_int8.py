"""Peer: Olive's standard CPU workflow for a BERT classifier (ONNX conversion, onnxruntime transformer
optimisation, dynamic int8 quantization), run on a fine-tuned Hugging Face folder. Runs in the peers' own
environment (olive-ai pins other versions of transformers than compress), called by benchmarks/sst2_edge.py.

    python olive_int8.py --model <hf folder> --out <dir>   # prints {"path": <the quantized .onnx>}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from olive.workflows import run as olive_run

    names = ["input_ids", "attention_mask", "token_type_ids"]
    config = {
        "input_model": {
            "type": "HfModel",
            "model_path": str(args.model),
            "task": "text-classification",
            # with transformers 5's SDPA masks the TorchScript export fails (IndexError in sdpa_mask); eager
            # attention is also what onnxruntime's BERT fusion recognises
            "load_kwargs": {"attn_implementation": "eager"},
            "io_config": {
                "input_names": names,
                "input_shapes": [[1, 128]] * 3,
                "input_types": ["int64"] * 3,
                "output_names": ["logits"],
                "dynamic_axes": {n: {"0": "batch", "1": "sequence"} for n in names} | {"logits": {"0": "batch"}},
            },
        },
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "passes": {
            "conversion": {"type": "OnnxConversion", "target_opset": 18, "use_dynamo_exporter": True},
            "transformers_optimization": {"type": "OrtTransformersOptimization", "model_type": "bert"},
            "quantization": {"type": "OnnxDynamicQuantization"},
        },
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(args.out / "cache"),
        "output_dir": str(args.out / "model"),
        "log_severity_level": 3,
    }
    olive_run(config)
    found = sorted((args.out / "model").rglob("*.onnx"))
    if not found:
        raise SystemExit(f"olive wrote no .onnx under {args.out / 'model'}")
    print(json.dumps({"path": str(found[0]), "workflow": list(config["passes"])}))


if __name__ == "__main__":
    main()
