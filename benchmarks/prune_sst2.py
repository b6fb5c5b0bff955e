"""DPHuBERT on SST-2 / MiniLM-L6: the fine-tuned teacher pruned to about 50% and 25% of its prunable encoder
parameters, against the distilled 3-layer student of recipes/sst2-minilm.yaml.

    python benchmarks/prune_sst2.py

Runs both recipes (cached stages reused), then measures every ONNX file (fp32 and int8 dynamic) in one
benchmark process, alternating over three rounds (batch 1, sequence 128, x86-cpu); prints the table and saves
benchmarks/results/prune_sst2.json. Targets: at equal or lower latency the pruned model is at least as
accurate as the layer-dropped student; the final size is within 2% of the target.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from timing import measure_alternating  # benchmarks/timing.py (scripts run from their folder)

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    logger = logging.getLogger("compress")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False
    base = pipeline.run(ROOT / "recipes" / "sst2-minilm.yaml", ROOT / "export" / "sst2-minilm")
    pruned = pipeline.run(ROOT / "recipes" / "sst2-prune.yaml", ROOT / "export" / "sst2-prune")
    models = [
        ("layer-dropped student (3 of 6 layers)", base.artifacts, "student"),
        ("DPHuBERT 50%", pruned.artifacts, "pruned50"),
        ("DPHuBERT 25%", pruned.artifacts, "pruned25"),
    ]
    files = [arts[f"{m}{suffix}"].path for _, arts, m in models for suffix in (".onnx", ".int8-dynamic.onnx")]
    p50 = measure_alternating(files)
    rows = []
    for i, (label, arts, m) in enumerate(models):
        info = arts[m].info.get("pruning", {})
        rows.append({
            "model": label, "params": arts[m].params, "kept_fraction": info.get("kept_fraction"),
            "target": (info.get("target") or {}).get("params"), "structure": info.get("structure"),
            "accuracy": arts[f"{m}.onnx"].metrics["accuracy"], "p50_ms": p50[2 * i],
            "int8_accuracy": arts[f"{m}.int8-dynamic.onnx"].metrics["accuracy"], "int8_p50_ms": p50[2 * i + 1],
        })  # fmt: skip
    print("| model | params | encoder kept | SST-2 acc | p50 ms | int8 acc | int8 p50 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        kept = f"{100 * r['kept_fraction']:.1f}% (target {100 * r['target']:.0f}%)" if r["kept_fraction"] else "-"
        print(f"| {r['model']} | {r['params']:,} | {kept} | {100 * r['accuracy']:.2f}% | {r['p50_ms']:.2f} | "
              f"{100 * r['int8_accuracy']:.2f}% | {r['int8_p50_ms']:.2f} |")  # fmt: skip
    ref = rows[0]
    target = {
        r["model"]: {
            "size_within_2pct": abs(r["kept_fraction"] - r["target"]) <= 0.02,
            "faster_or_equal": r["p50_ms"] <= ref["p50_ms"] * 1.02,
            "at_least_as_accurate": r["accuracy"] >= ref["accuracy"],
        }
        for r in rows[1:]
    }
    print(f"target: {target}")
    path = ROOT / "benchmarks" / "results" / "prune_sst2.json"
    path.write_text(json.dumps({"rows": rows, "target": target, "environment": environment()}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
