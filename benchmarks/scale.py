"""Training at scale, SST-2 / MiniLM-L6: distillation steps per second on 1 and 2 processes (same global batch),
dev accuracy after the same number of samples, the teacher-logit cache's speed-up, and the cost of checkpoints.

    python benchmarks/scale.py [--steps 400] [--rounds 2] [--nprocs 1,2] [--device cpu] [--precisions fp32]
                               [--checkpoint-every 200] [--tag _cpu]

Every row is a fresh `compress run` (under `torchrun --standalone` for several processes) of a one-stage recipe:
`distill` of the 3-layer student of recipes/sst2-minilm.yaml from a MiniLM-L6 teacher fine-tuned on SST-2 for
`--teacher-steps` steps first (300 by default: about 85% accuracy, enough to compare students; the speed does not
depend on it), kd + ce, batch 32, on 8,000 training sentences (the speed does not depend on the split's
size; the teacher-logit cache then takes a minute, not ten). Rows alternate within each round and each keeps
its median; steps per second come from the training loop's own clock (model loading and the test evaluation
are left out). The teacher-logit cache is computed once, before the rounds, and shared by every cached row.
The checkpoint row's cost is also timed directly (the seconds spent writing checkpoints, the final one included,
against its training time), which run-to-run noise does not blur. Prints the table and saves
benchmarks/results/scale<tag>.json. Targets: 2 processes within noise of 1 process
in dev accuracy; checkpointing every 200 steps costs under 3% of the step time; on a GPU, bf16 at least 1.8x
the steps per second of fp32 at equal accuracy (`benchmarks/gpu_check.sh` runs that part).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from compress import pipeline
from compress.environment import environment

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "export" / "scale"
TRAIN_SAMPLES = 8000


def _recipe(name: str, teacher: Path, steps: int, device: str, precision: str, cache: bool, every: int | None) -> Path:
    base = yaml.safe_load((ROOT / "recipes" / "sst2-minilm.yaml").read_text())
    data = {**base["data"], "max_train_samples": TRAIN_SAMPLES}
    for key in ("train", "dev", "test"):
        data[key] = str((ROOT / "recipes" / data[key]).resolve())
    distill = next(s for s in base["stages"] if s["stage"] == "distill")
    stage = {**distill, "max_steps": steps, "eval_every": steps, "cache_teacher_outputs": cache}
    stage.pop("epochs", None)
    recipe = {
        "name": name, "seed": 0, "data": data, "teacher": {"hf": str(teacher)},
        "train": {"device": device, "precision": precision, "checkpoint_every": every},
        "stages": [stage],
    }  # fmt: skip
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _teacher(steps: int) -> Path:
    """MiniLM-L6 fine-tuned on SST-2 for ``steps`` steps (cached in export/scale/teacher)."""
    base = yaml.safe_load((ROOT / "recipes" / "sst2-minilm.yaml").read_text())
    data = dict(base["data"])
    for key in ("train", "dev", "test"):
        data[key] = str((ROOT / "recipes" / data[key]).resolve())
    finetune = {**base["stages"][0], "max_steps": steps, "eval_every": steps}
    recipe = {"name": "scale-teacher", "seed": 0, "data": data, "teacher": base["teacher"], "stages": [finetune]}
    path = WORK / "teacher.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = pipeline.run(path, WORK / "teacher")
    return result.artifacts["teacher"].path


def _run(recipe: Path, out: Path, nproc: int) -> dict:
    """One fresh run; its distill stage's training record and test/dev accuracy."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shared = WORK / "teacher-cache"
    shared.mkdir(exist_ok=True)
    (out / ".cache").symlink_to(shared, target_is_directory=True)  # one teacher-logit cache for every row
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "compress", "run", str(recipe), "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    [student] = [a for a in manifest["artifacts"] if a["name"] == "student"]
    training = student["info"]["training"]
    return {
        "steps": training["steps"],
        "seconds": training["seconds"],
        "steps_per_s": training["steps"] / training["seconds"],
        "dev_accuracy": student["metrics"]["dev_accuracy"],
        "test_accuracy": student["metrics"]["accuracy"],
        "checkpoints": training.get("checkpoints", 0),
        "checkpoint_seconds": training.get("checkpoint_seconds", 0.0),
        "world_size": manifest["training"]["world_size"],
        "precision": manifest["training"]["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nprocs", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--tag", default="")
    parser.add_argument("--rows", default="procs,nocache,checkpoint",
                        help="which rows: procs (1 and --nprocs processes), nocache, checkpoint")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    teacher = _teacher(args.teacher_steps)
    nprocs = [int(n) for n in args.nprocs.split(",")]
    precisions = args.precisions.split(",")

    kinds = set(args.rows.split(","))
    rows: dict[str, tuple[Path, int]] = {}
    first = precisions[0]
    reference = f"1 process, {first}, teacher logits cached"
    reference_recipe = _recipe(f"scale-{first}-1", teacher, args.steps, args.device, first, True, None)
    if "procs" in kinds:
        for precision in precisions:
            for n in nprocs:
                label = f"{n} process{'es' if n > 1 else ''}, {precision}, teacher logits cached"
                recipe = _recipe(f"scale-{precision}-{n}", teacher, args.steps, args.device, precision, True, None)
                rows[label] = (recipe, n)
    if "nocache" in kinds:
        rows["1 process, teacher run every step"] = (
            _recipe("scale-nocache", teacher, args.steps, args.device, first, False, None), 1)  # fmt: skip
    if "checkpoint" in kinds:
        rows[f"1 process, checkpoint every {args.checkpoint_every} steps"] = (
            _recipe("scale-ckpt", teacher, args.steps, args.device, first, True, args.checkpoint_every), 1)  # fmt: skip

    print("teacher logits for the cache (once) ...", flush=True)
    warm = _run(reference_recipe, WORK / "warm", 1)
    runs: dict[str, list[dict]] = {label: [] for label in rows}
    for r in range(args.rounds):
        order = list(rows) if r % 2 == 0 else list(reversed(rows))  # alternate: drift hits every row alike
        for label in order:
            recipe, n = rows[label]
            runs[label].append(_run(recipe, WORK / recipe.stem, n))
            print(f"round {r + 1}: {label}: {runs[label][-1]['steps_per_s']:.3f} steps/s", flush=True)

    ref = statistics.median(x["steps_per_s"] for x in runs.get(reference) or [warm])
    table = []
    for label, results in runs.items():
        speed = statistics.median(x["steps_per_s"] for x in results)
        table.append({
            "row": label, "steps_per_s": speed, "samples_per_s": speed * 32, "vs_reference": speed / ref,
            "dev_accuracy": results[-1]["dev_accuracy"], "test_accuracy": results[-1]["test_accuracy"],
            "runs": results,
        })  # fmt: skip
    by = {row["row"]: row for row in table}
    summary: dict[str, float] = {}
    nocache = by.get("1 process, teacher run every step")
    if nocache is not None:
        summary["teacher_cache_speedup"] = 1 / nocache["vs_reference"]
    ckpt = by.get(f"1 process, checkpoint every {args.checkpoint_every} steps")
    if ckpt is not None:
        if reference in by:
            summary["checkpoint_overhead_pct"] = 100 * (1 / ckpt["vs_reference"] - 1)
        # the same cost timed directly (every write, the final one too, against the training time): free of the
        # run-to-run noise that the A/B ratio above carries
        summary["checkpoint_write_seconds"] = statistics.median(
            x["checkpoint_seconds"] / max(1, x["checkpoints"]) for x in ckpt["runs"])
        summary["checkpoint_overhead_timed_pct"] = statistics.median(
            100 * x["checkpoint_seconds"] / x["seconds"] for x in ckpt["runs"])
        summary["checkpoint_overhead_target_pct"] = 3.0
    if 2 in nprocs and f"2 processes, {first}, teacher logits cached" in by:
        two = by[f"2 processes, {first}, teacher logits cached"]
        summary["two_process_dev_accuracy_delta_pts"] = 100 * (two["dev_accuracy"] - by[reference]["dev_accuracy"])
    print(f"\nSST-2 distillation, {args.steps} steps of batch 32, {args.device}, {os.cpu_count()} CPU cores")
    print(f"{'row':55} {'steps/s':>8} {'samples/s':>10} {'vs ref':>7} {'dev acc':>8} {'test acc':>9}")
    for row in table:
        print(f"{row['row']:55} {row['steps_per_s']:8.3f} {row['samples_per_s']:10.1f} {row['vs_reference']:6.2f}x "
              f"{100 * row['dev_accuracy']:7.2f}% {100 * row['test_accuracy']:8.2f}%")  # fmt: skip
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    result = {"rows": table, "summary": summary, "steps": args.steps, "rounds": args.rounds, "device": args.device,
              "teacher_steps": args.teacher_steps, "checkpoint_every": args.checkpoint_every, "warm_run": warm,
              "train_samples": TRAIN_SAMPLES, "environment": environment()}  # fmt: skip
    path = ROOT / "benchmarks" / "results" / f"scale{args.tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
