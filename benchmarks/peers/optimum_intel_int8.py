"""Peer: optimum-intel's post-training int8 for OpenVINO (NNCF full quantization, its defaults), run on a
fine-tuned Hugging Face folder with SST-2 training sentences as calibration data. Runs in the peers' own
environment (optimum-intel pins other versions of transformers than compress), called by
benchmarks/sst2_edge.py.

    python optimum_intel_int8.py --model <hf folder> --train <train.tsv> --out <dir> [--samples 300]
    # prints {"path": <openvino_model.xml>}
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--length", type=int, default=128)
    args = ap.parse_args()
    import nncf
    import numpy as np
    from optimum.intel import OVConfig, OVModelForSequenceClassification, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    with args.train.open(newline="") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")][: args.samples]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    encoded = tokenizer(sentences, padding="max_length", truncation=True, max_length=args.length, return_tensors="np")
    samples = [{k: np.asarray(v[i : i + 1]) for k, v in encoded.items()} for i in range(len(sentences))]
    calibration = nncf.Dataset(samples)
    model = OVModelForSequenceClassification.from_pretrained(args.model, export=True)
    quantizer = OVQuantizer.from_pretrained(model)
    quantizer.quantize(
        calibration_dataset=calibration,
        ov_config=OVConfig(quantization_config=OVQuantizationConfig()),
        save_directory=args.out,
    )
    print(json.dumps({"path": str(args.out / "openvino_model.xml"), "calibration_samples": len(sentences)}))


if __name__ == "__main__":
    main()
