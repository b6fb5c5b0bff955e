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

from timing import log_to_console  # benchmarks/timing.py (scripts run from their folder)

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    "teacher.onnx",
    "teacher.int8-ort-default.onnx",
    "teacher.int8-dynamic.onnx",
    "teacher.int8-static.onnx",
    "student.onnx",
    "student.int8-dynamic.onnx",
    "student.int8-static.onnx",
]


def one_line_baseline(result: pipeline.RunResult, teacher: dict) -> dict:
    """What every user already gets: onnxruntime `quantize_dynamic` with its defaults on the teacher's ONNX,
    its accuracy on the test split and its latency on x86-cpu, measured here beside the pipeline's rows."""
    from onnxruntime.quantization import quantize_dynamic

    from compress.context import Context
    from compress.devices import resolve_device
    from compress.evaluation import onnx_logits, predictor
    from compress.recipe.load import load_recipe
    from compress.runners import measure

    src = result.out_dir / teacher["path"]
    dst = result.out_dir / "benchmark" / "teacher.int8-ort-default.onnx"
    dst.parent.mkdir(exist_ok=True)
    quantize_dynamic(str(src), str(dst))
    recipe_path = ROOT / "recipes" / "sst2-minilm.yaml"
    ctx = Context.of(load_recipe(recipe_path), recipe_path, result.out_dir)
    ctx.tokenizer_folder = result.artifacts["teacher"].path
    test = ctx.data().test
    logits = onnx_logits(predictor("onnxruntime", dst), test, 64, "baseline accuracy")
    dev = resolve_device("x86-cpu")
    lat = measure(dev, [dst], batch=1, sequence=128, runs=100, warmup=10)[0]
    return {
        "metrics": {"accuracy": float((logits.argmax(-1) == test.labels.numpy()).mean())},
        "latency": {"x86-cpu": lat},
        "size_bytes": dst.stat().st_size,
        "params": teacher["params"],
    }


def main() -> None:
    log_to_console()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "export" / "sst2-minilm")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = pipeline.run(ROOT / "recipes" / "sst2-minilm.yaml", args.out, force=args.force, from_stage="profile")
    arts = {a["name"]: a for a in result.report["artifacts"]}
    arts["teacher.int8-ort-default.onnx"] = one_line_baseline(result, arts["teacher.onnx"])
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
