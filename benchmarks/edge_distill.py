"""Which distillation pays for the flagship's searched student: the student AutoDistil picks at a budget of
recipes/sst2-edge.yaml (8x the teacher's p50 by default), distilled with the flagship's kd + ce and with
intermediate-layer losses or a longer schedule added, in one run.

    python benchmarks/edge_distill.py [--budget 8] [--variants minilm,hidden,long] [--out DIR]

Reuses benchmarks/sst2_edge.py's cache folder (the teacher, its fine-tuning, the search and the kd + ce
distillation are cached there; run sst2_edge.py first, or this script runs them). Variants (same schedule as the
flagship's distillation unless said):
- `kdce`: the flagship's distillation (kd T=2 + 0.5 ce, 2 epochs): the reference;
- `minilm`: + MiniLMv2 Q/K/V relations of the last layers (width-independent; what the super-network trained);
- `hidden`: + FitNets hints on every student layer through learned projections (the student is narrower);
- `long`: kd + ce for 4 epochs;
- `augment`: kd + ce on the training split grown by 4 augmented copies of each example (Tang et al. 2019's masking,
  word replacement and n-gram sampling), labelled by the teacher, for 1 epoch over the grown split (about 2.4x the
  reference's steps: compare with `long`, 2x).
Accuracy is measured on SST-2 test with onnxruntime on each student's fused dynamic-int8 graph (what the flagship
deploys) and fp32 graph, by sst2_edge.py's evaluation code; the latency is the same for every variant (same
architecture). Prints the table and saves benchmarks/results/edge_distill.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

from sst2_edge import ROOT, _accuracy, _budget, _budget_reference, _test_set, _variant
from timing import log_to_console

from compress import pipeline
from compress.environment import environment
from compress.recipe.schema import _fill_budgets

EXTRA: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {  # name -> (label, extra losses, keys)
    "minilm": ("+ MiniLMv2 relations (last layer)", [{"name": "minilm", "weight": 1.0}], {}),
    "hidden": ("+ hidden-state hints (every layer, projected)", [{"name": "hidden", "weight": 1.0}], {}),
    "long": ("kd + ce, 4 epochs", [], {"epochs": 4}),
    "augment": ("kd + ce on 4 augmented copies per example (Tang et al. 2019), 1 epoch", [],
                {"augment": {"copies": 4}, "epochs": 1}),
}


def _recipe(budget_ms: float, names: list[str]) -> tuple[Path, dict[str, str]]:
    """The flagship at ``budget_ms`` up to its distillation (unchanged, so cached), then one distillation per
    variant (each from the searched student) and an export of every student."""
    outputs: dict[str, str] = {}

    def edit(recipe: dict[str, Any]) -> None:
        _budget(budget_ms)(recipe)
        _fill_budgets(recipe)  # the search's limit, resolved as in the whole flagship (prune's share included)
        recipe.pop("budgets")  # no gates: nothing is profiled here
        stages = recipe["stages"]
        at = next(i for i, s in enumerate(stages) if s["stage"] == "distill")
        base = stages[at]
        outputs["kdce"] = base.get("output", "student")
        variants = []
        for name in names:
            _, losses, keys = EXTRA[name]
            v = copy.deepcopy(base) | keys | {"output": f"student_{name}"}
            v["losses"] = [*base["losses"], *losses]
            variants.append(v)
            outputs[name] = v["output"]
        export = {"stage": "export", "models": list(outputs.values()), "int8": ["dynamic"]}
        recipe["stages"] = [*stages[: at + 1], *variants, export]

    return _variant(f"distill-{budget_ms:.4f}", edit), outputs


def main() -> None:
    log_to_console()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "export" / "sst2-edge")
    ap.add_argument("--budget", type=float, default=8.0, help="Speed-up over the teacher's p50 (as sst2_edge.py).")
    ap.add_argument("--variants", default="minilm,hidden,long")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "edge_distill.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reference = args.out / "budget_reference.json"
    if not reference.is_file():
        raise SystemExit(f"{reference} is missing: run benchmarks/sst2_edge.py first (it fixes the budgets).")
    teacher_p50 = _budget_reference(Path("unused"), reference, False)
    path, outputs = _recipe(round(teacher_p50 / args.budget, 4), args.variants.split(","))
    result = pipeline.run(path, args.out)
    arts = {a.name: a for a in result.artifacts.values()}
    feeds, labels = _test_set(arts["teacher"].path)
    rows = []
    for name, out in outputs.items():
        model = arts[out]
        train = model.info.get("training") or {}
        rows.append({
            "variant": name, "label": EXTRA[name][0] if name in EXTRA else "kd + ce, 2 epochs (the flagship's)",
            "dev": model.metrics.get("dev_accuracy"),
            "fp32": _accuracy("onnxruntime", arts[f"{out}.onnx"].path, feeds, labels),
            "int8_dynamic": _accuracy("onnxruntime", arts[f"{out}.int8-dynamic.onnx"].path, feeds, labels),
            "seconds": train.get("seconds"),
        })  # fmt: skip
    print("| distillation | dev acc | test fp32 | test int8 dynamic | training s |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        dev = f"{100 * r['dev']:.2f}%" if r["dev"] is not None else "-"
        secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
        print(f"| {r['label']} | {dev} | {100 * r['fp32']:.2f}% | {100 * r['int8_dynamic']:.2f}% | {secs} |")
    payload = {"environment": environment(), "budget_x": args.budget, "teacher_p50_ms": teacher_p50, "rows": rows,
               "student": arts[outputs["kdce"]].parent, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(payload, indent=2, default=str))
    print(f"saved {args.results}")


if __name__ == "__main__":
    main()
