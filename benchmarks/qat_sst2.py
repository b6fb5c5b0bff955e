"""Quantization-aware distillation on SST-2: the distilled 3-layer MiniLM student of recipes/sst2-minilm.yaml in
fp32, onnxruntime PTQ (dynamic, static) and QAT-KD int8 with the attention losses' ablation, in one run.

    python benchmarks/qat_sst2.py [--steps 400] [--lr 1e-5] [--variants student.qat-kd.onnx,...] [--tag _long]

The teacher fine-tune and the student distillation are reused from export/sst2-minilm (run sst2_minilm.py
first). Every accuracy is measured on the ONNX artifact with onnxruntime (SST-2 test, 872 sentences); every
latency in one benchmark process, alternating (x86-cpu, batch 1, sequence 128). Prints the table and saves
benchmarks/results/qat_sst2.json. Target: QAT-KD int8 within 0.3 points of the fp32 student and better than
the best PTQ.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml
from timing import measure_alternating, seed_from_sst2_minilm  # benchmarks/timing.py (scripts run from their folder)

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent
BOTH = ["kd", "attention_map", "attention_output"]
W4 = {"weights": {"bits": 4}}
VARIANTS: dict[str, tuple[str, list[str], dict]] = {  # artifact -> (label, losses, other stage keys)
    "student.qat-kd.onnx": ("QAT-KD int8: logits", ["kd"], {}),
    "student.qat-kd-map.onnx": ("QAT-KD int8: + attention-map", ["kd", "attention_map"], {}),
    "student.qat-kd-out.onnx": ("QAT-KD int8: + attention-output", ["kd", "attention_output"], {}),
    "student.qat-kd-map-out.onnx": ("QAT-KD int8: + both", BOTH, {}),
    "student.qat-w4-kd-map-out.onnx": ("QAT-KD 4-bit weights: + both", BOTH, W4),
    "student.qat-w4-kd-map-out-lr5e-5.onnx": ("QAT-KD 4-bit weights: + both, lr 5e-5", BOTH, {**W4, "lr": 5e-5}),
}
BASELINES = {
    "student.onnx": "fp32 student",
    "student.int8-dynamic.onnx": "PTQ int8 dynamic (onnxruntime)",
    "student.int8-static.onnx": "PTQ int8 static QDQ (onnxruntime)",
    "student.int4-rtn.onnx": "PTQ 4-bit weights RTN (onnxruntime)",
}


def _recipe(steps: int, lr: float, variants: dict[str, tuple[str, list[str], dict]]) -> Path:
    """sst2-qat.yaml with its one QAT stage replaced by the variants, onnxruntime's 4-bit PTQ after them (so the
    cached int8 stages stay valid), and no profile stage."""
    recipe = yaml.safe_load((ROOT / "recipes" / "sst2-qat.yaml").read_text())
    qat = next(s for s in recipe["stages"] if s.get("method") == "qat")
    stages = [s for s in recipe["stages"] if s is not qat and s["stage"] != "profile"]
    at = next(i for i, s in enumerate(stages) if s["stage"] == "export")
    for name, (_, losses, extra) in variants.items():
        variant = {**qat, "max_steps": steps, "eval_every": max(1, steps // 4), "lr": lr, "output": name, **extra}
        variant["losses"] = [{"name": n, "weight": 1.0, **({"temperature": 1.0} if n == "kd" else {})} for n in losses]
        stages.insert(at, variant)
        at += 1
    stages.insert(at, {"stage": "quantize", "method": "ptq", **W4})
    recipe["stages"] = stages
    path = ROOT / "recipes" / ".sst2-qat.bench.yaml"  # beside the recipe: its data paths are relative
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400, help="QAT steps per variant (batch 32)")
    parser.add_argument("--lr", type=float, default=1e-5, help="QAT peak learning rate")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated QAT artifacts to train")
    parser.add_argument("--tag", default="", help="suffix of the results file (qat_sst2<tag>.json)")
    args = parser.parse_args()
    variants = {n: VARIANTS[n] for n in args.variants.split(",")}
    logger = logging.getLogger("compress")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False
    out = ROOT / "export" / "sst2-qat"
    seed_from_sst2_minilm(out, "0[0-2]-*")
    recipe = _recipe(args.steps, args.lr, variants)
    try:
        arts = pipeline.run(recipe, out).artifacts
    finally:
        recipe.unlink()
    names = list(BASELINES) + list(variants)
    p50 = measure_alternating([arts[n].path for n in names])
    labels = {**BASELINES, **{n: v[0] for n, v in variants.items()}}
    fp32_acc, fp32_ms = arts["student.onnx"].metrics["accuracy"], p50[0]
    rows = []
    for name, ms in zip(names, p50, strict=True):
        a = arts[name]
        train = a.info.get("training", {})
        rows.append({
            "artifact": name, "label": labels[name], "accuracy": a.metrics["accuracy"],
            "drop_points": 100 * (fp32_acc - a.metrics["accuracy"]), "p50_ms": ms, "speedup": fp32_ms / ms,
            "size_mb": a.size_bytes / 1e6, "qat_seconds": train.get("seconds"),
            "integer_kernels": a.info.get("integer_kernels") or a.info.get("integer_ops"),
        })  # fmt: skip
    print("| artifact | SST-2 test acc | drop vs fp32 | x86-cpu p50 ms | speed vs fp32 | size MB | QAT time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        qat_time = f"{r['qat_seconds'] / 60:.1f} min" if r["qat_seconds"] else "-"
        print(f"| {r['label']} | {100 * r['accuracy']:.2f}% | {r['drop_points']:+.2f} | {r['p50_ms']:.2f} | "
              f"{r['speedup']:.2f}x | {r['size_mb']:.1f} | {qat_time} |")  # fmt: skip
    int8_ptq = [r["accuracy"] for r in rows if r["label"].startswith("PTQ int8")]
    int8_qat = [r for r in rows if r["label"].startswith("QAT-KD int8")]
    target = {}
    if int8_qat:
        best_qat = max(int8_qat, key=lambda r: r["accuracy"])
        target = {
            "best_qat": best_qat["label"],
            "within_0.3_points_of_fp32": best_qat["drop_points"] <= 0.3,
            "better_than_best_ptq": best_qat["accuracy"] > max(int8_ptq),
        }
    w4 = [r for r in rows if "4-bit" in r["label"] and r["label"].startswith("QAT")]
    if w4:
        rtn = next(r for r in rows if r["artifact"] == "student.int4-rtn.onnx")
        target["4bit_qat_minus_rtn_points"] = 100 * (max(r["accuracy"] for r in w4) - rtn["accuracy"])
    print(f"target: {target}")
    path = ROOT / "benchmarks" / "results" / f"qat_sst2{args.tag}.json"
    path.write_text(json.dumps({"rows": rows, "target": target, "qat_steps": args.steps, "qat_lr": args.lr,
                                "environment": environment()}, indent=2))  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()
