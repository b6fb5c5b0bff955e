"""The flagship on SST-2: the budget-driven recipe (recipes/sst2-edge.yaml) at one budget against the simple path
and the peers, on the MiniLM-L6 teacher fine-tuned on SST-2 (../shared/models/minilm-l6-sst2), in one run.

    python benchmarks/sst2_edge.py --budget 8 [--peers-python /path/to/peers/bin/python] [--search] [--out DIR]
    python benchmarks/sst2_edge.py --merge benchmarks/results/sst2_edge_4x.json benchmarks/results/sst2_edge_8x.json

One invocation is one budget and must finish within 100 minutes on 2 cores from a cold start (it prints its wall
time and each phase's); each JSON stands on its own, with its own teacher reference measured in its own run, and
`--merge` puts several runs into one table and `pareto.png` (each row's speed-up against its own run's teacher),
saying which run and CPU each row came from.

Rows (accuracy on SST-2 test on each artifact's own runtime; latency at batch 1 / sequence 128, the p50 of 100
runs in each of 7 rounds, reported as the median round and the fastest round; in each round every onnxruntime
file in turn in one benchmark process, then every OpenVINO file, so that drift hits both runtimes alike):
- the teacher fp32 on onnxruntime (the reference: the budget is a speed-up over it, `budgets.<device>.speedup`,
  which the recipe's prune stage and profile gate measure with the teacher timed beside them);
- peers on the same teacher: onnxruntime `quantize_dynamic` (defaults); Olive's standard CPU workflow (ONNX
  conversion, transformer optimisation, dynamic int8; benchmarks/peers/olive_int8.py); optimum-intel / NNCF
  post-training int8 on OpenVINO (benchmarks/peers/optimum_intel_int8.py). Olive and optimum-intel pin other
  transformers versions than compress, so they run in their own environment, given by --peers-python (made
  with `pip install -c <(echo torch==2.13.0) olive-ai onnxruntime "optimum-intel[openvino,nncf]"`); without it they are
  left out and the table says so;
- our simple path: the recipe's own 3-layer student (the teacher's layers 1, 3, 5, distilled with kd + ce) +
  dynamic int8, and the same student after QAT-KD for the dynamic-int8 graph (`activations: {ranges: dynamic}`);
- the budget-driven recipe (`speedup: K` on the recipe's `deploy.device`): its dynamic-int8 artifact on
  onnxruntime and its static QDQ artifact on OpenVINO;
- with --search, the budget reached through a searched student instead: AutoDistil picks it for the budget (an
  absolute limit from the teacher's p50 measured right before, kept in --out/budget_reference.json) and kd+ce
  distils it, then the recipe's DPHuBERT, export and profile. It says whether the search pays.
Every model is evaluated by the same code here: sentences cut at the recipe's 64 training tokens, padded to the
deployed 128 (Olive's graph has that static shape). Stages are cached in --out: a rerun continues where it stopped,
and a run at another budget reuses the distilled student. The JSON keeps each training's dev curve (the schedule's
justification) and the wall time of each phase.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from timing import log_to_console, measure_alternating  # benchmarks/timing.py (scripts run from their folder)

from compress import pipeline
from compress.environment import environment
from compress.errors import BudgetError, CompressError

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "sst2-edge.yaml"
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data" / "sst2"
TRAIN_LENGTH, DEPLOY_LENGTH = 64, 128
RUNTIMES = (("onnxruntime", "x86-cpu"), ("openvino", "openvino-cpu"))
ROUNDS = 7  # rounds of the table's timing; in each, every onnxruntime file in turn, then every OpenVINO file
# each row's latency is reported two ways: the median round (what a busy machine gives) and the fastest round (its
# quiet speed: on this shared machine slow phases came and went within a round, slowing the 91 MB teacher by 40-70%
# and a small student anywhere from 0 to 80%, so a median of 5 rounds moved a speed-up between 5.0x and 7.6x for
# the same two graphs); the targets are checked on both and the README quotes both
STATISTICS = {"median": statistics.median, "fastest": min}
SEARCH = [  # the searched route (--search): what the flagship recipe did before it dropped its search
    {"stage": "search", "method": "autodistil", "budget": "recipe",
     "space": {"layers": [1, 2, 3, 4], "hidden": [192, 256, 320, 384], "heads": [6, 8, 10, 12],
               "ffn": [512, 768, 1152, 1536]},
     "supernet": {"subspaces": 2, "steps": 300, "batch_size": 32, "lr": 5.0e-5, "random_subnets": 2,
                  "eval_batches": 8}},
    {"stage": "distill", "epochs": 2, "batch_size": 32, "lr": 1.0e-4, "warmup_steps": 100, "eval_every": 500,
     "losses": [{"name": "kd", "weight": 1.0, "temperature": 2.0}, {"name": "ce", "weight": 0.5}]},
]  # fmt: skip


SIMPLE_QAT = {  # QAT-KD trained for the dynamic-int8 graph: as fast as the simple path by construction
    "stage": "quantize", "method": "qat", "source": "simple", "activations": {"ranges": "dynamic"}, "epochs": 0.5,
    "batch_size": 32, "eval_every": 500,
}  # fmt: skip


SMOKE: dict[str, int] = {}  # --smoke: the data keys every variant takes (a check of the machinery, not a result)


def _variant(tag: str, edit: Any) -> Path:
    """recipes/sst2-edge.yaml changed by ``edit`` (written beside it: its data paths are relative)."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data"].update(SMOKE)
    edit(recipe)
    path = RECIPE.parent / f".sst2-edge-{tag}.bench.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _teacher_only(recipe: dict) -> None:
    recipe.pop("budgets")  # gates, and what budget-driven stages read: none here
    recipe["stages"] = [{"stage": "export", "models": ["teacher"]}]


def _distill(recipe: dict) -> dict:
    """The recipe's distillation of its student (`output: simple`): the simple path's student."""
    return next(s for s in recipe["stages"] if s["stage"] == "distill")


def _simple(recipe: dict) -> None:
    recipe.pop("budgets")
    recipe["stages"] = [_distill(recipe), {"stage": "export", "models": ["simple"], "int8": ["dynamic"]}, SIMPLE_QAT]


def _simple_no_qat(recipe: dict) -> None:
    _simple(recipe)
    recipe["stages"] = recipe["stages"][:-1]


def _searched(limit_ms: float) -> Any:
    def edit(recipe: dict) -> None:  # the flagship with its distillation replaced by a search + distillation
        budget = recipe["budgets"][recipe["deploy"]["device"]]
        for key in ("speedup", "reference"):  # a search's latency tables hold ms: the teacher measured just before
            budget.pop(key, None)
        budget["p50_ms"] = round(limit_ms, 4)
        stages = recipe["stages"]
        prune = next(s for s in stages if s["stage"] == "prune") | {"source": "student", "teacher": "student"}
        rest = [s for s in stages if s["stage"] in ("export", "profile")]
        recipe["stages"] = [*SEARCH, prune, *rest]

    return edit


def _budget(factor: float, device: str | None = None) -> Any:
    def edit(recipe: dict) -> None:  # the whole recipe, its profile stage and budget gates included
        _drive(recipe, device or recipe["deploy"]["device"])
        recipe["budgets"][recipe["deploy"]["device"]]["speedup"] = factor  # the device the budget drives

    return edit


def _drive(recipe: dict, device: str) -> None:
    """The recipe with its budget on ``device`` (pruning measures that device's int8 graph): the speed-up and the
    tighter accuracy limit move there, the other device keeps the looser one."""
    was = recipe["deploy"]["device"]
    if device == was:
        return
    budgets = recipe["budgets"]
    driving, other = dict(budgets[was]), dict(budgets[device])
    speed = {k: driving.pop(k) for k in ("speedup", "reference") if k in driving}
    budgets[device] = other | {k: v for k, v in speed.items() if k == "speedup"}
    budgets[device]["accuracy_drop"] = driving.get("accuracy_drop", other.get("accuracy_drop"))
    if device != "x86-cpu":  # the speed-up stays over the teacher fp32 on onnxruntime
        budgets[device]["reference"] = "x86-cpu"
    budgets[was] = driving | {"accuracy_drop": other.get("accuracy_drop", driving.get("accuracy_drop"))}
    recipe["deploy"]["device"] = device


def budget_device(choice: str) -> tuple[str, str]:
    """The device whose int8 graph the budget drives, and why: ``auto`` takes OpenVINO's static QDQ where the CPU has
    VNNI (there it ran the flagship's student 22% faster than onnxruntime's dynamic int8) and onnxruntime's
    dynamic int8 elsewhere (on an AVX2-only EPYC, OpenVINO's int8 graphs ran slower than its own fp32: the 3-layer
    student 12.6 ms static QDQ, against the teacher fp32's 21.2 ms on onnxruntime)."""
    if choice != "auto":
        return choice, "--device"
    if _has_vnni(environment()["cpu"].get("flags", [])):
        return "openvino-cpu", "auto: the CPU has VNNI"
    return "x86-cpu", "auto: the CPU has no VNNI"


def _has_vnni(flags: list[str]) -> bool:
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _budget_reference(teacher_onnx: Path, saved: Path, remeasure: bool, tag: str = "") -> float:
    """The teacher's fp32 p50 that fixes a budget (``tag``; none: the one logged at the start), measured right
    before that budget's recipe runs (its prune stage times graphs minutes later: this machine's speed drifts by a
    third within an hour, and a limit fixed at another hour would prune to the wrong latency), and kept in the
    cache folder: the budgets are in the stages' cache keys, so a rerun must not move them with the machine's
    noise. The table's latencies are all measured again at the end, in turns."""
    refs = json.loads(saved.read_text()) if saved.exists() else {}
    key = f"teacher_p50_ms{'@' + tag if tag else ''}"
    if key in refs and not remeasure:
        return float(refs[key])
    (p50,) = measure_alternating([teacher_onnx])
    refs |= {key: p50, f"measured{'@' + tag if tag else ''}": time.strftime("%Y-%m-%d %H:%M:%S")}
    saved.write_text(json.dumps(refs, indent=1))
    return p50


def _run(path: Path, out: Path) -> dict[str, Any]:
    try:
        result = pipeline.run(path, out)
    except BudgetError as missed:  # the gate failed after every artifact and the report were written: tabled
        logging.getLogger("compress").warning("sst2_edge: %s", missed)
        result = missed.result
    return {a.name: a for a in result.artifacts.values()}


# ---- evaluation: one code path for every row ----------------------------------------------------------------
def _test_set(tokenizer_dir: Path) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with (SHARED / "test.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    enc = tok([r["sentence"] for r in rows], truncation=True, max_length=TRAIN_LENGTH, padding="max_length",
              return_tensors="np")  # fmt: skip
    pad = DEPLOY_LENGTH - TRAIN_LENGTH
    feeds = []
    for i in range(len(rows)):
        one = {k: np.pad(v[i : i + 1].astype(np.int64), ((0, 0), (0, pad))) for k, v in enc.items()}
        feeds.append(one)
    return feeds, np.array([int(r["label"]) for r in rows])


def _accuracy(runtime: str, path: Path, feeds: list[dict[str, np.ndarray]], labels: np.ndarray) -> float:
    from compress.evaluation import predictor

    run = predictor(runtime, path)
    names = set(run.input_names)
    preds = [int(np.argmax(run({k: v for k, v in f.items() if k in names}))) for f in feeds]
    return float((np.array(preds) == labels).mean())


# ---- peers ------------------------------------------------------------------------------------------------
def _peer(python: str, script: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([python, str(ROOT / "benchmarks" / "peers" / script), *args], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peers(python: str | None, teacher: Path, teacher_onnx: Path, work: Path) -> dict[str, dict[str, Any]]:
    from onnxruntime.quantization import quantize_dynamic

    work.mkdir(parents=True, exist_ok=True)
    ort_default = work / "teacher.int8-ort-default.onnx"
    if not ort_default.exists():
        quantize_dynamic(str(teacher_onnx), str(ort_default))
    out = {"ort_quantize_dynamic": {"path": ort_default, "runtime": "onnxruntime"}}
    if python is None:
        return out
    olive_dir, ov_dir = work / "olive", work / "optimum-intel"
    olive = _peer(python, "olive_int8.py", "--model", str(teacher), "--out", str(olive_dir))
    out["olive"] = {"path": Path(olive["path"]), "runtime": "onnxruntime", "workflow": olive["workflow"]}
    ov = _peer(python, "optimum_intel_int8.py", "--model", str(teacher), "--train", str(SHARED / "train.tsv"),
               "--out", str(ov_dir), "--samples", "300")  # fmt: skip
    out["optimum_intel"] = {"path": Path(ov["path"]), "runtime": "openvino"}
    return out


def _peer_versions(python: str | None) -> dict[str, str]:
    if python is None:
        return {}
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['olive-ai', 'optimum-intel', 'optimum', 'nncf', 'openvino', 'onnxruntime', 'transformers', 'torch']}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


# ---- the run ----------------------------------------------------------------------------------------------
def _training(art: Any) -> dict[str, Any]:
    """A trained artifact's schedule: seconds and its dev curve (the history `train` keeps)."""
    t = art.info.get("training") or {}
    return {"seconds": t.get("seconds"), "steps": t.get("steps"), "best_step": t.get("best_step"),
            "dev_curve": [{k: v for k, v in h.items() if k in ("step", "loss", "dev_accuracy")}
                          for h in t.get("history", [])]}  # fmt: skip


def main() -> None:
    logger = log_to_console()
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=8.0,
                    help="The speed-up over the teacher fp32 (onnxruntime) to budget for: one per invocation.")
    ap.add_argument("--merge", type=Path, nargs="+", help="Merge these runs' JSONs into one table and pareto.png.")
    ap.add_argument("--out", type=Path, default=ROOT / "export" / "sst2-edge",
                    help="Cache folder (shared by the budgets: the teacher's logits and the simple path are reused).")
    ap.add_argument("--peers-python", default=None, help="Python of the peers' environment (Olive, optimum-intel).")
    ap.add_argument("--remeasure", action="store_true", help="Measure the teacher's p50 (the --search limit) again.")
    ap.add_argument("--search", action="store_true",
                    help="Also reach the budget through an AutoDistil-searched student (not by default).")
    ap.add_argument("--results", type=Path, default=None,
                    help="The run's JSON (default benchmarks/results/sst2_edge_<K>x.json; with --merge, "
                    "benchmarks/results/sst2_edge.json).")  # fmt: skip
    ap.add_argument("--device", choices=["auto", "openvino-cpu", "x86-cpu"], default="auto",
                    help="The device whose int8 graph the budget drives (auto: OpenVINO's static QDQ where the CPU has "
                    "VNNI, onnxruntime's dynamic int8 elsewhere).")  # fmt: skip
    ap.add_argument("--no-qat", action="store_true", help="Leave out the simple path's QAT-KD row.")
    ap.add_argument("--smoke", type=int, default=0, metavar="N",
                    help="Check the machinery on N training sentences (and N dev / test): no result, nothing saved "
                    "under benchmarks/results unless --results says where.")  # fmt: skip
    args = ap.parse_args()
    if args.smoke:
        SMOKE.update({"max_train_samples": args.smoke, "max_eval_samples": args.smoke})
        if args.results is None:
            args.results = args.out / "smoke.json"
    if args.merge:
        merge(args.merge, args.results or RESULTS / "sst2_edge.json")
        return
    t0 = time.perf_counter()
    cold = not args.out.is_dir() or not any(p.name[:2].isdigit() for p in args.out.iterdir())
    phases: dict[str, float] = {}

    def timed(name: str, fn: Any, *a: Any) -> Any:
        started = time.perf_counter()
        out = fn(*a)
        phases[name] = round(time.perf_counter() - started, 1)
        logger.info("sst2_edge: %s took %.0f s", name, phases[name])
        return out

    k, tag = args.budget, f"{args.budget:g}x"
    device, why = budget_device(args.device)
    logger.info("sst2_edge: the budget drives %s's int8 graph (%s)", device, why)
    teacher: dict[str, Path] = {}  # its folder and fp32 graph: the budget's recipe exports both
    failed: dict[str, str] = {}  # the budget's recipe could not run to the end: tabled as missed, with the reason

    def reach(route: str) -> dict[str, Any] | None:
        """The budget through the recipe (``route`` "-search": the searched variant): its deployed artifacts, or
        None with its failure in ``failed``."""
        if route:  # an absolute limit, from the teacher measured right before
            reference = _budget_reference(teacher["onnx"], args.out / "budget_reference.json", args.remeasure,
                                          tag + route)  # fmt: skip
            logger.info("sst2_edge: budget %s%s: teacher fp32 p50 %.3f ms now, limit %.3f ms", tag, route, reference,
                        reference / k)  # fmt: skip
            edit = _searched(reference / k)
        else:  # a speed-up: the stages time the teacher themselves
            edit = _budget(k, device)
        try:
            a = _run(_variant(tag + route, edit), args.out)
        except CompressError as exc:
            logger.warning("sst2_edge: budget %s%s failed: %s", tag, route, exc)
            failed[tag + route] = str(exc)
            return None
        pruning = a["student"].info.get("pruning") or {}
        limit = (pruning.get("latency_model") or {}).get("limit_ms") or pruning.get("limit_ms")
        return {"budget_ms": limit, "dynamic": a["student.int8-dynamic.onnx"], "static": a["student.int8-static.onnx"],
                "student": a["student"], "teacher_static": a.get("teacher.int8-static.onnx"),
                "simple": a.get("simple"), "teacher": a["teacher"].path,
                "teacher_onnx": a["teacher.onnx"].path}  # fmt: skip

    ours = {tag: o} if (o := timed(f"budget {tag} (distill, prune, export, profile)", reach, "")) else {}
    if o is not None:
        teacher.update({"dir": o["teacher"], "onnx": o["teacher_onnx"]})
    else:  # the budget failed: the reference rows still get the teacher's graph
        arts = timed("teacher export", _run, _variant("teacher", _teacher_only), args.out)
        teacher.update({"dir": arts["teacher"].path, "onnx": arts["teacher.onnx"].path})
    teacher_dir, teacher_onnx = teacher["dir"], teacher["onnx"]
    try:
        if args.no_qat:
            raise CompressError("left out by --no-qat")
        simple = timed("simple path (export, QAT-KD)", _run, _variant("simple", _simple), args.out)
    except CompressError as exc:  # e.g. QAT's dynamic-int8 parity on a CPU without VNNI: tabled as missed
        logger.warning("sst2_edge: the simple path's QAT-KD failed: %s", exc)
        failed["simple+qat"] = str(exc)
        simple = timed("simple path (export)", _run, _variant("simple-no-qat", _simple_no_qat), args.out)
    searched = {}
    if args.search and (o := timed(f"budget {tag}, searched route", reach, "-search")):
        searched[tag] = o
    peers = timed("peers", _peers, args.peers_python, teacher_dir, teacher_onnx, args.out / "peers")

    rows: list[dict[str, Any]] = [
        {"row": "teacher fp32", "who": "reference", "runtime": "onnxruntime", "path": teacher_onnx},
        {"row": "teacher int8, onnxruntime quantize_dynamic", "who": "peer", "runtime": "onnxruntime",
         "path": peers["ort_quantize_dynamic"]["path"]},
    ]  # fmt: skip
    if "olive" in peers:
        rows.append({"row": "teacher int8, Olive (conversion + transformer optimisation + dynamic int8)",
                     "who": "peer", "runtime": "onnxruntime", "path": peers["olive"]["path"]})  # fmt: skip
        rows.append({"row": "teacher int8, optimum-intel / NNCF PTQ", "who": "peer", "runtime": "openvino",
                     "path": peers["optimum_intel"]["path"]})  # fmt: skip
    rows.append({"row": "simple path: 3-layer student + dynamic int8", "who": "simple", "runtime": "onnxruntime",
                 "path": simple["simple.int8-dynamic.onnx"].path})  # fmt: skip
    if "simple.int8-qat-dynamic.onnx" in simple:
        rows.append({"row": "simple path + QAT-KD for the dynamic-int8 graph", "who": "ours", "budget": "simple+qat",
                     "runtime": "onnxruntime", "path": simple["simple.int8-qat-dynamic.onnx"].path})  # fmt: skip
    for t, o in ours.items():
        limit = f" ({o['budget_ms']:.2f} ms)" if o["budget_ms"] else ""  # on the row of the budget's device
        rows.append({"row": f"budget {t}{limit * (device == 'x86-cpu')}: int8 dynamic", "who": "ours",
                     "budget": t, "runtime": "onnxruntime", "path": o["dynamic"].path})  # fmt: skip
        rows.append({"row": f"budget {t}{limit * (device == 'openvino-cpu')}: int8 static QDQ",
                     "who": "ours", "budget": t, "runtime": "openvino", "path": o["static"].path})  # fmt: skip
    for t, o in searched.items():
        rows.append({"row": f"budget {t}, searched student (AutoDistil + kd/ce), DPHuBERT: int8 dynamic",
                     "who": "ours", "budget": f"{t} search", "runtime": "onnxruntime",
                     "path": o["dynamic"].path})  # fmt: skip
        rows.append({"row": f"budget {t}, searched student: int8 static QDQ", "who": "ours",
                     "budget": f"{t} search", "runtime": "openvino", "path": o["static"].path})  # fmt: skip
    teacher_static = next((o["teacher_static"] for o in ours.values() if o.get("teacher_static")), None)
    if teacher_static is not None:  # the recipe exports the teacher too (what a speed-up budget divides)
        rows.append({"row": "teacher int8 static QDQ (our export stage: onnxruntime quantize_static, minmax)",
                     "who": "export", "runtime": "openvino", "path": teacher_static.path})  # fmt: skip
    rows.append({"row": "teacher fp32 on OpenVINO", "who": "reference", "runtime": "openvino", "path": teacher_onnx})

    started = time.perf_counter()
    feeds, labels = _test_set(teacher_dir)
    for r in rows:
        r["accuracy"] = _accuracy(r["runtime"], r["path"], feeds, labels)
        r["size_mb"] = sum(p.stat().st_size for p in [r["path"], r["path"].with_suffix(".bin")] if p.exists()) / 1e6
    # the two runtimes take turns too, round by round: OpenVINO rows are compared with the onnxruntime teacher, and
    # the machine's speed drifts between minutes (the teacher measured 17.2-24.2 ms on one day here)
    groups = [(rt, dev, [r for r in rows if r["runtime"] == rt]) for rt, dev in RUNTIMES]
    per_round: dict[str, list[float]] = {str(r["path"]) + r["runtime"]: [] for r in rows}
    for _ in range(ROUNDS):
        for _rt, device, mine in groups:
            for r, p50 in zip(mine, measure_alternating([r["path"] for r in mine], 1, device), strict=True):
                per_round[str(r["path"]) + r["runtime"]].append(p50)
                r["device"] = device
    for r in rows:
        r["p50_ms_rounds"] = per_round[str(r["path"]) + r["runtime"]]
        r["p50_ms"] = statistics.median(r["p50_ms_rounds"])
        r["p50_ms_fastest"] = min(r["p50_ms_rounds"])
    ref = rows[0]
    for r in rows:
        r["delta_points"] = 100 * (r["accuracy"] - ref["accuracy"])
        r["speedup"] = ref["p50_ms"] / r["p50_ms"]
        r["speedup_fastest"] = ref["p50_ms_fastest"] / r["p50_ms_fastest"]
    phases["table (accuracy, 7 timing rounds)"] = round(time.perf_counter() - started, 1)
    targets: dict[str, Any] = {stat: _targets(rows, "p50_ms" if stat == "median" else "p50_ms_fastest", k)
                               for stat in STATISTICS}  # fmt: skip
    targets["failed_budgets"] = failed
    _print(rows, targets, k)
    seconds = round(time.perf_counter() - t0, 1)
    schedules = {"simple (distill)": _training(simple["simple"])}
    if "simple.int8-qat-dynamic.onnx" in simple:
        schedules["simple + QAT-KD"] = _training(simple["simple.int8-qat-dynamic.onnx"])
    schedules |= {f"budget {t} (prune: finetune after the masked phase)": _training(o["student"])
                  for t, o in ours.items()}  # fmt: skip
    payload = {
        "budget": k,
        "budget_device": {"device": device, "why": why},
        "environment": environment(),
        "peers_environment": _peer_versions(args.peers_python),
        "rows": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in rows],
        "targets": targets,
        "ours": {t: {"budget_ms": o["budget_ms"], "params": o["student"].params,
                     "pruning": o["student"].info.get("pruning"), "lineage": o["student"].parent}
                 for t, o in ours.items()},  # fmt: skip
        "searched": {t: {"budget_ms": o["budget_ms"], "params": o["student"].params,
                         "pruning": o["student"].info.get("pruning"), "lineage": o["student"].parent}
                     for t, o in searched.items()},  # fmt: skip
        "schedules": schedules,
        "phases_seconds": phases,
        "cold_start": cold,
        "seconds": seconds,
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    results = args.results or RESULTS / f"sst2_edge_{tag}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(payload, indent=2, default=str))
    how = "cold start" if cold else f"some stages from the cache in {args.out}"
    print(f"\nwall time {seconds / 60:.1f} min ({how})")
    for name, secs in phases.items():
        print(f"  {name}: {secs / 60:.1f} min")
    print(f"saved {results}")


def merge(paths: list[Path], out: Path) -> None:
    """One table of several runs (one budget each): every row of the first run, and the budget rows of the others;
    each row's speed-up is against the teacher fp32 of its own run. Writes ``out`` and pareto.png beside it."""
    runs = [json.loads(p.read_text()) for p in paths]
    merged: list[dict[str, Any]] = []
    for i, (path, run) in enumerate(zip(paths, runs, strict=True)):
        env = run["environment"]
        flags = env.get("cpu", {}).get("flags", [])
        simd = "VNNI" if _has_vnni(flags) else "AVX2 only" if "avx2" in flags else "no AVX2"
        cpu = f"{env.get('cpu', {}).get('model', '?')}, {simd}"
        for r in run["rows"]:
            if i == 0 or r["who"] == "ours" and r.get("budget") != "simple+qat":
                merged.append(r | {"run": f"{path.name} ({run.get('finished', '?')}, {cpu})"})
    print("| artifact | runtime | SST-2 test acc | Δ vs teacher | speed-up, median round | speed-up, fastest round | "
          "size MB | run |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in merged:
        print(f"| {r['row']} | {r['runtime']} | {100 * r['accuracy']:.2f}% | {r['delta_points']:+.2f} | "
              f"{r['speedup']:.2f}x | {r['speedup_fastest']:.2f}x | {r['size_mb']:.1f} | {r['run']} |")  # fmt: skip
    for run in runs:
        t = run["targets"]
        print(f"\nbudget {run['budget']:g}x ({run['seconds'] / 60:.0f} min, "
              f"{'cold' if run.get('cold_start') else 'partly cached'}): 8x within 1 point on the median round "
              f"{'met' if t['median']['budget_at_1pt']['met'] else 'missed'}")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": [str(p) for p in paths], "rows": merged}, indent=2))
    from compress.report.pareto import plot_pareto

    device = "latency / the teacher fp32 of the same run"
    report = {"recipe": {"name": "sst2_edge (merged runs)"}, "devices": [device],
              "artifacts": [{"name": r["row"], "latency": {device: {"p50_ms": 1 / r["speedup"]}},
                             "metrics": {"accuracy": r["accuracy"]}} for r in merged]}  # fmt: skip
    plot_pareto(report, out.parent / "pareto.png", x_label="p50 latency / teacher fp32 on onnxruntime (same run)")
    print(f"saved {out} and {out.parent / 'pareto.png'}")


def _targets(rows: list[dict[str, Any]], ms: str, k: float) -> dict[str, Any]:
    """The issue's targets, each met or missed by how much, on the latency statistic ``ms``: the budget's speed-up
    ``k`` within 1 point (the issue's is 8x), the budget rows over the simple path, every peer dominated."""
    simple = next(r for r in rows if r["who"] == "simple")
    # every artifact we deploy counts, on either runtime: the speed-up is always against the teacher fp32 on
    # onnxruntime, measured in the same run
    mine = [r for r in rows if r["who"] == "ours"]
    fastest_ok = [r for r in mine if r["delta_points"] >= -1.0]
    ref = rows[0]
    best = min(fastest_ok, key=lambda r: r[ms]) if fastest_ok else None
    speedup = ref[ms] / best[ms] if best else None
    out: dict[str, Any] = {
        "budget_at_1pt": {"budget": k, "met": bool(speedup and speedup >= k),
                      "best_speedup_within_1pt": speedup,
                      "best_row": best["row"] if best else None},  # fmt: skip
        "over_simple_path": {},
        "peers_dominated": {},
    }
    for r in mine:
        gain = r["delta_points"] - simple["delta_points"]
        out["over_simple_path"][f"{r['budget']} ({r['runtime']})"] = {
            "points": gain, "latency_ratio": r[ms] / simple[ms],
            "met": gain >= 0.5 and r[ms] <= simple[ms],
        }  # fmt: skip
    ours_all = [r for r in rows if r["who"] == "ours"]
    for p in (r for r in rows if r["who"] == "peer"):
        dominated_by = [r["row"] for r in ours_all if r[ms] <= p[ms] and r["accuracy"] >= p["accuracy"]]
        out["peers_dominated"][p["row"]] = {"met": bool(dominated_by), "by": dominated_by}
    return out


def _print(rows: list[dict[str, Any]], targets: dict[str, Any], k: float) -> None:
    print("| artifact | runtime | SST-2 test acc | Δ vs teacher | p50 ms, median round | speed vs teacher fp32 (ort) "
          "| p50 ms, fastest round | speed, fastest rounds | size MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['row']} | {r['runtime']} | {100 * r['accuracy']:.2f}% | {r['delta_points']:+.2f} | "
              f"{r['p50_ms']:.3f} | {r['speedup']:.2f}x | {r['p50_ms_fastest']:.3f} | {r['speedup_fastest']:.2f}x | "
              f"{r['size_mb']:.1f} |")  # fmt: skip
    for stat in STATISTICS:
        print(f"\ntargets on the {stat} round:")
        t = targets[stat]["budget_at_1pt"]
        best = t["best_speedup_within_1pt"]
        verdict = "met" if t["met"] else "MISSED"
        print(f"{k:g}x at <= 1.0 point: {verdict} (best within 1 point: {best:.2f}x, {t['best_row']})" if best
              else f"{k:g}x at <= 1.0 point: MISSED (no row within 1 point)")  # fmt: skip
        for tag, v in targets[stat]["over_simple_path"].items():
            print(f"budget {tag} vs simple path: {v['points']:+.2f} points at {v['latency_ratio']:.2f}x its latency: "
                  f"{'met' if v['met'] else 'MISSED'}")  # fmt: skip
        for peer, v in targets[stat]["peers_dominated"].items():
            print(f"{peer}: {'dominated by ' + v['by'][0] if v['met'] else 'NOT dominated'}")
    for tag, why in targets.get("failed_budgets", {}).items():
        print(f"budget {tag}: MISSED, the recipe did not finish: {why}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
