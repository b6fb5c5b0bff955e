"""DisWOT on the digits CNN space: does the training-free score rank students by their distilled accuracy?

    python benchmarks/search_digits.py [--candidates 24] [--epochs 20]

Trains the digits teacher (the quickstart's), samples candidates from the CNN space within one parameter
budget, scores each with DisWOT at random initialisation (timed), then distils every candidate with the same
fixed schedule (kd + ce) and measures test accuracy. Prints the Spearman rank correlation with final accuracy
of the DisWOT score, of the parameter count and of a random score; saves benchmarks/results/search_digits.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from compress.config import TrainSchedule
from compress.data.config import DataConfig
from compress.data.dataset import load_data
from compress.environment import environment
from compress.losses.functional import ce_loss, kd_loss
from compress.models.cnn import CNN, CnnSpec
from compress.models.task_model import TaskModel
from compress.search.budget import static_cost
from compress.search.candidates import build_candidate
from compress.search.diswot import diswot_score, last_feature_path, signature
from compress.search.space import CnnSpace, arch_key
from compress.training.evaluate import evaluate
from compress.training.loop import train

ROOT = Path(__file__).resolve().parent.parent
SPACE = CnnSpace(
    block=["plain", "resnet", "mbv2"], stages=[2, 3], depth=[1, 2], width=[8, 16, 24, 32, 48], kernel=[3, 5]
)
MAX_PARAMS = 40_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--epochs", type=float, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_data(DataConfig(format="sklearn_digits"), ROOT, None, args.seed)
    torch.manual_seed(args.seed)
    spec = CnnSpec(widths=[64, 128], depths=[2, 2], block="resnet", in_channels=1, num_classes=10)
    teacher = TaskModel(CNN(spec), "cnn", "image", 10, None, spec.model_dump())
    sched = TrainSchedule(epochs=15, batch_size=64, lr=3e-3, warmup_steps=20)

    def ce_step(batch):  # noqa: ANN001, ANN202
        loss = ce_loss(teacher.logits(batch), batch["labels"])
        return loss, {"ce": float(loss)}

    train(teacher, ce_step, data.train, data.dev, sched, seed=args.seed, label="teacher")
    teacher.module.eval().requires_grad_(False)
    t_acc = evaluate(teacher, data.test, 256)
    print(f"teacher: {teacher.num_params():,} params, test accuracy {100 * t_acc:.2f}%")

    rng, archs, seen = random.Random(args.seed), [], set()
    while len(archs) < args.candidates:
        a = SPACE.sample(rng)
        if arch_key(a) in seen:
            continue
        seen.add(arch_key(a))
        cand = build_candidate(SPACE, a, teacher, in_channels=1, seed=args.seed)
        if cand.num_params() <= MAX_PARAMS:
            archs.append(a)

    batch = next(iter(data.train.loader(64, shuffle=True, seed=args.seed)))
    t0 = time.perf_counter()
    t_sig = signature(teacher, batch, last_feature_path(teacher))
    scores = []
    for a in archs:
        cand = build_candidate(SPACE, a, teacher, in_channels=1, seed=args.seed)
        s_sig = signature(cand, batch, last_feature_path(cand), candidate=True)
        sample = diswot_score(t_sig, s_sig, semantic="sample")
        scores.append(
            diswot_score(t_sig, s_sig) | {"score_sample": sample["score"], "semantic_sample": sample["semantic"]}
        )
    score_s = time.perf_counter() - t0

    dsched = TrainSchedule(epochs=args.epochs, batch_size=64, lr=5e-3, warmup_steps=20)
    rows, t1 = [], time.perf_counter()
    for i, (a, sc) in enumerate(zip(archs, scores, strict=True)):
        student = build_candidate(SPACE, a, teacher, in_channels=1, seed=args.seed)

        def kd_step(b, student=student):  # noqa: ANN001, ANN202
            s = student.logits(b)
            with torch.no_grad():
                t = teacher.logits(b)
            loss = kd_loss(s, t, temperature=4.0) + 0.5 * ce_loss(s, b["labels"])
            return loss, {"loss": float(loss)}

        train(student, kd_step, data.train, data.dev, dsched, seed=args.seed, label=f"candidate {i + 1}")
        acc = evaluate(student, data.test, 256)
        cost = static_cost(student, 1, (1, 8, 8))
        rows.append(
            {
                "arch": a,
                "describe": SPACE.describe(a),
                "params": cost.params,
                "mflops": cost.mflops,
                "diswot": sc["score"],
                "semantic": sc["semantic"],
                "relation": sc["relation"],
                "diswot_sample": sc["score_sample"],
                "semantic_sample": sc["semantic_sample"],
                "accuracy": acc,
            }
        )
        print(
            f"{i + 1:2d} {SPACE.describe(a):45s} params {cost.params:6d} diswot {sc['score']:.3f} acc {100 * acc:.2f}%"
        )
    train_s = time.perf_counter() - t1

    acc = np.array([r["accuracy"] for r in rows])
    rand = np.random.default_rng(args.seed)
    rand_rhos = [spearmanr(rand.random(len(rows)), acc).statistic for _ in range(1000)]
    rho: dict[str, float] = {
        "diswot": spearmanr([r["diswot"] for r in rows], acc).statistic,
        "diswot, sample-by-sample CAM semantic": spearmanr([r["diswot_sample"] for r in rows], acc).statistic,
        "diswot_semantic_only": spearmanr([-r["semantic"] for r in rows], acc).statistic,
        "diswot_semantic_only (sample CAM)": spearmanr([-r["semantic_sample"] for r in rows], acc).statistic,
        "diswot_relation_only": spearmanr([-r["relation"] for r in rows], acc).statistic,
        "params": spearmanr([r["params"] for r in rows], acc).statistic,
        "mflops": spearmanr([r["mflops"] for r in rows], acc).statistic,
        "random (one draw)": rand_rhos[0],
        "random (mean |rho| of 1000 draws)": float(np.mean(np.abs(rand_rhos))),
    }
    print("\n| ranking signal | Spearman rho with distilled test accuracy |")
    print("| --- | --- |")
    for k, v in rho.items():
        print(f"| {k} | {v:+.3f} |")
    print(
        f"\nDisWOT scoring of {len(rows)} candidates: {score_s:.2f} s; distilling all of them: {train_s:.0f} s "
        f"({train_s / max(score_s, 1e-9):.0f}x). Accuracy range {100 * acc.min():.2f}-{100 * acc.max():.2f}%."
    )
    target = {  # plain bools: JSON
        "rho>=0.5": bool(rho["diswot"] >= 0.5),
        "beats params": bool(rho["diswot"] > rho["params"]),
        "beats random": bool(rho["diswot"] > rho["random (one draw)"]),
    }
    print(f"target: {target}")
    out = {
        "teacher_accuracy": t_acc,
        "max_params": MAX_PARAMS,
        "space": SPACE.model_dump(),
        "rows": rows,
        "rho": rho,
        "target": target,
        "score_seconds": score_s,
        "train_seconds": train_s,
        "environment": environment(),
    }
    path = ROOT / "benchmarks" / "results" / "search_digits.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
