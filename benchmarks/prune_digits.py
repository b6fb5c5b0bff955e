"""Channel pruning on digits: the CNN teacher pruned with torch-pruning to 2x and 4x fewer MACs, with
distillation, against the unpruned teacher and the quickstart's hand-sized student.

    python benchmarks/prune_digits.py

Runs `recipes/digits-prune.yaml` (profile re-run so that every latency comes from one run), prints the
table and saves benchmarks/results/prune_digits.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent
ROWS = [("teacher.onnx", "teacher (unpruned)"), ("pruned2x.onnx", "pruned, 1/2 MACs"),
        ("pruned4x.onnx", "pruned, 1/4 MACs"), ("student.onnx", "hand-sized student (distilled)")]  # fmt: skip


def main() -> None:
    logger = logging.getLogger("compress")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False
    result = pipeline.run(ROOT / "recipes" / "digits-prune.yaml", from_stage="profile")
    arts = result.artifacts
    base = arts["teacher.onnx"]
    rows = []
    for name, label in ROWS:
        a = arts[name]
        model = arts[name.removesuffix(".onnx") if name != "student.onnx" else "student"]
        kept = model.info.get("pruning", {}).get("kept_fraction")
        rows.append({
            "artifact": name, "label": label, "accuracy": a.metrics["accuracy"], "params": a.params,
            "macs_fraction": kept, "p50_ms": a.latency["x86-cpu"]["p50_ms"],
            "speedup": base.latency["x86-cpu"]["p50_ms"] / a.latency["x86-cpu"]["p50_ms"],
        })  # fmt: skip
    print("| model | params | MACs kept | digits test acc | x86-cpu p50 ms | speed-up vs teacher |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        kept = f"{100 * r['macs_fraction']:.1f}%" if r["macs_fraction"] is not None else "-"
        print(f"| {r['label']} | {r['params']:,} | {kept} | {100 * r['accuracy']:.2f}% | {r['p50_ms']:.4f} | "
              f"{r['speedup']:.2f}x |")  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "prune_digits.json"
    path.write_text(json.dumps({"rows": rows, "environment": environment()}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
