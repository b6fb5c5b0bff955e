"""SST-2 / MiniLM-L6: teacher fp32, teacher int8 (onnxruntime dynamic: the one-line baseline), student fp32
and int8 — accuracy (onnxruntime, test split) and x86-cpu p50 latency, all measured in one run.

    python benchmarks/sst2_minilm.py [--out export/sst2-minilm] [--force]

Runs `recipes/sst2-minilm.yaml` through the same `pipeline.run` as `compress run` (cached stages are
reused; the profile stage is always re-run so that every latency comes from this one run), prints a table
and saves it to benchmarks/results/sst2_minilm.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    "teacher.onnx",
    "teacher.int8-dynamic.onnx",
    "teacher.int8-static.onnx",
    "student.onnx",
    "student.int8-dynamic.onnx",
    "student.int8-static.onnx",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "export" / "sst2-minilm")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = pipeline.run(ROOT / "recipes" / "sst2-minilm.yaml", args.out, force=args.force, from_stage="profile")
    arts = {a["name"]: a for a in result.report["artifacts"]}
    base = arts["teacher.onnx"]
    rows = []
    for name in ROWS:
        a = arts[name]
        lat = a["latency"]["x86-cpu"]
        rows.append(
            {
                "artifact": name,
                "accuracy": a["metrics"]["accuracy"],
                "accuracy_delta_pts": 100 * (a["metrics"]["accuracy"] - base["metrics"]["accuracy"]),
                "p50_ms": lat["p50_ms"],
                "p90_ms": lat["p90_ms"],
                "speedup_vs_teacher_fp32": base["latency"]["x86-cpu"]["p50_ms"] / lat["p50_ms"],
                "size_mb": a["size_bytes"] / 1e6,
                "params": a["params"],
            }
        )
    print("| artifact | SST-2 test acc | Δ vs teacher | p50 ms | p90 ms | speed vs teacher fp32 | size MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['artifact']} | {100 * r['accuracy']:.2f}% | {r['accuracy_delta_pts']:+.2f} | {r['p50_ms']:.2f} | "
            f"{r['p90_ms']:.2f} | {r['speedup_vs_teacher_fp32']:.2f}x | {r['size_mb']:.1f} |"
        )
    student = next(r for r in rows if r["artifact"] == "student.int8-dynamic.onnx")
    target = {
        "speedup>=4": student["speedup_vs_teacher_fp32"] >= 4.0,
        "accuracy_loss<=1.5pts": student["accuracy_delta_pts"] >= -1.5,
    }
    print(f"target (student int8 dynamic): {target}")
    stages = [vars(s) for s in result.stages]
    out = {
        "rows": rows,
        "target": target,
        "stages": stages,
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    path = ROOT / "benchmarks" / "results" / "sst2_minilm.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
