"""Search on SST-2 / MiniLM-L6: does the AutoDistil-chosen student beat the hand-picked 3-layer student?

    python benchmarks/search_sst2.py [--budget-ms MS]

1. Runs `recipes/sst2-minilm.yaml` (cached stages reused, profile re-run) and takes the hand-picked 3-layer
   student's fp32 p50 on x86-cpu (batch 1, sequence 128) as the latency budget.
2. Runs `recipes/sst2-search.yaml` with that budget: DisWOT ranks the space (its pick is reported), AutoDistil
   trains two super-networks and picks a sub-network, which gets the same distillation as the hand-picked one.
3. Measures both students' ONNX files (fp32 and int8 dynamic) in one benchmark process, alternating, and
   prints the table; saves benchmarks/results/search_sst2.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from timing import measure_alternating  # benchmarks/timing.py (scripts run from their folder)

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent
BASE_OUT, OUT = ROOT / "export" / "sst2-minilm", ROOT / "export" / "sst2-search"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-ms", type=float, help="fix the budget (default: measure the hand-picked student now; "
                    "a fixed value lets a re-run reuse the cached search and distillation stages)")  # fmt: skip
    args = ap.parse_args()
    logger = logging.getLogger("compress")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False
    t0 = time.perf_counter()
    base = pipeline.run(ROOT / "recipes" / "sst2-minilm.yaml", BASE_OUT, from_stage="profile")
    hand = base.artifacts["student.onnx"]
    budget = args.budget_ms or round(hand.latency["x86-cpu"]["p50_ms"], 3)
    print(
        f"budget: {budget:.3f} ms (hand-picked 3-layer student fp32 p50 now: "
        f"{hand.latency['x86-cpu']['p50_ms']:.3f} ms)"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    for folder in [*BASE_OUT.glob("00-teacher-*"), *BASE_OUT.glob("01-finetune-*")]:  # same stages, same keys
        if not (OUT / folder.name).exists():
            shutil.copytree(folder, OUT / folder.name)
    text = (ROOT / "recipes" / "sst2-search.yaml").read_text()
    bench_recipe = ROOT / "recipes" / ".sst2-search.bench.yaml"  # beside the original: same relative data paths
    bench_recipe.write_text(text.replace("max_latency_ms: 5.6", f"max_latency_ms: {budget:.3f}"))
    try:
        result = pipeline.run(bench_recipe, OUT)
    finally:
        bench_recipe.unlink()
    arts = result.artifacts
    searches = {s["name"]: s for s in result.report.get("artifacts", [])}
    auto_info = next(
        json.loads(p.read_text())["artifacts"][0]["info"]["search"] for p in sorted(OUT.glob("*-search-*/stage.json"))
        if json.loads(p.read_text())["artifacts"][0]["name"] == "student"
    )  # fmt: skip
    dis_info = arts["diswot_student"].info["search"]
    files = [hand.path, arts["student.onnx"].path, base.artifacts["student.int8-dynamic.onnx"].path,
             arts["student.int8-dynamic.onnx"].path]  # fmt: skip
    p50 = measure_alternating(files)
    rows = [
        {"student": "hand-picked L3 H384 A12 F1536 (sst2-minilm.yaml)", "precision": "fp32",
         "accuracy": hand.metrics["accuracy"], "p50_ms": p50[0], "params": hand.params},
        {"student": f"AutoDistil {auto_info['chosen']['describe']}", "precision": "fp32",
         "accuracy": arts["student.onnx"].metrics["accuracy"], "p50_ms": p50[1], "params": arts["student"].params},
        {"student": "hand-picked (int8 dynamic)", "precision": "int8",
         "accuracy": base.artifacts["student.int8-dynamic.onnx"].metrics["accuracy"], "p50_ms": p50[2]},
        {"student": "AutoDistil (int8 dynamic)", "precision": "int8",
         "accuracy": arts["student.int8-dynamic.onnx"].metrics["accuracy"], "p50_ms": p50[3]},
    ]  # fmt: skip
    print("| student | precision | SST-2 test acc | x86-cpu p50 ms (one run) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['student']} | {r['precision']} | {100 * r['accuracy']:.2f}% | {r['p50_ms']:.2f} |")
    target = {
        "accuracy>=hand-picked": rows[1]["accuracy"] >= rows[0]["accuracy"],
        "latency<=hand-picked": rows[1]["p50_ms"] <= rows[0]["p50_ms"] * 1.02,
    }
    print(f"target: {target}  (latency within 2% counts as equal: run-to-run noise)")
    for label, info in (("AutoDistil", auto_info), ("DisWOT", dis_info)):
        c = info["chosen"]
        print(
            f"{label}: chose {c['describe']} (score {c['score']:.4f}); predicted {c['predicted_ms']:.2f} ms, "
            f"measured {c['measured_ms']:.2f} ms; latency table error (top {len(info['top'])}) "
            f"{100 * info['latency_table_mape']:.1f}%; search {info['seconds']:.0f} s"
        )
    out = {
        "budget_ms": budget, "rows": rows, "target": target, "autodistil": auto_info, "diswot": dis_info,
        "stages": [vars(s) for s in result.stages], "seconds": time.perf_counter() - t0,
        "environment": environment(), "report_artifacts": list(searches),
    }  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "search_sst2.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
