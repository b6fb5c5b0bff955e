"""`search -> distill -> export` end to end, on digits (DisWOT), on a tiny BERT over real SST-2 (AutoDistil) and on
a tiny LLaMA pre-trained on pycode (AutoDistil over a causal LM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError
from compress.families import load as load_model
from tests.conftest import digits_recipe_head, lm_recipe_head, text_recipe_head, write_recipe

DIGITS = (
    digits_recipe_head("search-digits")
    + """  - stage: search
    method: diswot
    space: {block: [plain, resnet], stages: [2], depth: [1, 2], width: [8, 16, 32], kernel: [3]}
    budget: {max_params: BUDGET}
    evolution: {population: 6, generations: 2}
    batch_size: 32
    top_k: 3
  - stage: distill
    epochs: 2
    batch_size: 64
    lr: 3.0e-3
  - stage: export
    int8: []
"""
)

TEXT = (
    text_recipe_head("search-sst2")
    + """stages:
  - stage: search
    method: autodistil
    space: {{layers: [1, 2], hidden: [16, 32], heads: [2, 4], ffn: [32, 64]}}
    budget: {{max_params: 2.0e6, max_latency_ms: 50, sequence: 32}}
    supernet: {{subspaces: 2, steps: 4, batch_size: 16, eval_batches: 2}}
    top_k: 2
  - stage: distill
    max_steps: 4
    batch_size: 16
  - stage: export
    int8: []
"""
)


def _search_info(out: Path) -> dict:
    stage = json.loads(next(out.glob("*-search-*/stage.json")).read_text())
    return stage["artifacts"][0]["info"]["search"]


def test_diswot_search_then_distill(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, DIGITS.replace("BUDGET", "12000"))
    result = pipeline.run(recipe, out=tmp_path / "out")
    info = _search_info(tmp_path / "out")
    assert info["method"] == "diswot" and info["evaluated"] >= 6
    assert all(row["params"] <= 12000 for row in info["top"])
    assert [r["score"] for r in info["top"]] == sorted((r["score"] for r in info["top"]), reverse=True)
    student = load_model(result.artifacts["student"].path)
    assert student.num_params() == info["chosen"]["params"] <= 12000
    assert result.artifacts["student.onnx"].metrics["accuracy"] > 0.3  # distilled from the searched arch
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Search: diswot -> `student`" in report and info["chosen"]["describe"] in report


def test_rerank_chooses_by_a_short_distillation_with_the_distill_losses(tmp_path: Path) -> None:
    text = DIGITS.replace("BUDGET", "12000").replace(
        "    top_k: 3\n", "    top_k: 3\n    rerank: {candidates: 3, max_steps: 30, batch_size: 64, lr: 3.0e-3}\n"
    )
    end = "    lr: 3.0e-3\n  - stage: export"
    text = text.replace(end, end.replace("  - stage", "    losses: [{name: kd}]\n  - stage"))
    result = pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
    info = _search_info(tmp_path / "out")
    rerank = info["rerank"]
    assert rerank["losses"] == ["kd"] and rerank["steps"] == 30  # the distill stage's losses, filled in
    dev = rerank["dev"]
    assert set(dev) == {r["describe"] for r in info["top"]} and all(0.0 < v <= 1.0 for v in dev.values())
    assert info["chosen"]["describe"] == max(dev, key=lambda k: dev[k])  # the best after distillation wins
    student = load_model(result.artifacts["student"].path)
    assert student.num_params() == info["chosen"]["params"]
    assert "rerank dev" in (tmp_path / "out" / "report.md").read_text()


def test_budget_no_candidate_meets_is_a_clear_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, DIGITS.replace("BUDGET", "100"))
    with pytest.raises(CompressError, match=r"search.budget: no candidate can meet it; the smallest"):
        pipeline.run(recipe, out=tmp_path / "out")
    assert not list((tmp_path / "out").glob("*-search-*"))  # nothing half-written is trusted


def test_autodistil_search_then_distill(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, TEXT.format(data=sst2_slice, teacher=tiny_bert_dir))
    result = pipeline.run(recipe, out=tmp_path / "out")
    info = _search_info(tmp_path / "out")
    assert len(info["supernets"]) == 2 and info["evaluated"] == 16
    for row in info["top"]:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0 and len(row["measured_rounds_ms"]) == 3
        assert row["measured_max_ms"] == max(row["measured_rounds_ms"]) >= row["measured_ms"]
    assert info["chosen"]["measured_ms"] <= 50  # the median of the rounds meets the budget
    assert info["latency_table_mape"] is not None
    chosen = info["chosen"]["arch"]
    student = load_model(result.artifacts["student"].path)
    cfg = student.module.config
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (chosen["layers"], chosen["hidden"])
    assert "student.onnx" in result.artifacts


def test_space_bigger_than_the_teacher_is_rejected(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    text = TEXT.format(data=sst2_slice, teacher=tiny_bert_dir).replace("hidden: [16, 32]", "hidden: [16, 64]")
    recipe = write_recipe(tmp_path, text)
    with pytest.raises(CompressError, match=r"search.space.hidden: \[64\] exceed the teacher's hidden \(32\)"):
        pipeline.run(recipe, out=tmp_path / "out")


LM_SEARCH = """  - stage: search
    method: autodistil
    space: {layers: [1, 2], hidden: [32, 64], heads: [2, 4], ffn: [64, 128]}
    budget: {max_params: 90000, sequence: 64}
    supernet: {subspaces: 2, steps: 50, batch_size: 8, eval_batches: 2, lr: 2.0e-3}
    top_k: 2
  - stage: distill
    max_steps: 8
    batch_size: 8
    losses: [{name: fkl}]
"""


def test_autodistil_searches_a_causal_lm_then_distils_it(tmp_path: Path, pycode_slice: Path) -> None:
    recipe = write_recipe(tmp_path, lm_recipe_head("search-lm", pycode_slice) + LM_SEARCH)
    result = pipeline.run(recipe, out=tmp_path / "out")
    info = _search_info(tmp_path / "out")
    assert len(info["supernets"]) == 2 and info["evaluated"] + info["rejected"] == 16 and info["rejected"] > 0
    for trained in info["supernets"]:
        assert trained["history"][-1]["loss"] < trained["history"][0]["loss"]  # causal relations are learnt
    chosen = info["chosen"]["arch"]
    assert info["chosen"]["params"] <= 90000 and all(row["params"] <= 90000 for row in info["top"])
    searched = load_model(result.artifacts["student"].path)
    cfg = searched.module.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        chosen["layers"], chosen["hidden"], chosen["heads"], chosen["heads"] // 2)  # fmt: skip
    teacher = result.artifacts["teacher"].metrics["perplexity"]
    # the sub-network keeps the teacher's sliced weights: far better than a random one (~512) before distillation
    assert result.artifacts["student"].metrics["perplexity"] < 4 * teacher


def test_decoder_search_refusals_name_the_key(tmp_path: Path, pycode_slice: Path) -> None:
    head = lm_recipe_head("search-lm", pycode_slice)
    diswot = head + "  - stage: search\n    method: diswot\n    budget: {max_params: 90000}\n"
    with pytest.raises(CompressError, match=r"stages\[1\].method: diswot does not apply to .*decoder family.*"
                                            r"use `method: autodistil`"):  # fmt: skip
        pipeline.run(write_recipe(tmp_path, diswot), out=tmp_path / "out")
    latency = head + LM_SEARCH.replace("sequence: 64", "sequence: 64, max_latency_ms: 5")
    with pytest.raises(CompressError, match=r"stages\[1\].budget.max_latency_ms: latency tables time encoders"):
        pipeline.run(write_recipe(tmp_path, latency), out=tmp_path / "out")
    groups = head + LM_SEARCH.replace("heads: [2, 4]", "heads: [3, 4]")
    with pytest.raises(CompressError, match=r"search.space.heads: \[3\] are not multiples of the teacher's 2 query"):
        pipeline.run(write_recipe(tmp_path, groups), out=tmp_path / "out")


BUDGET_DRIVEN = (
    text_recipe_head("budget-sst2")
    + """deploy: {{sequence: 32, precision: int8}}
budgets:
  x86-cpu: {{p90_ms: 40, accuracy_drop: 50, artifacts: [student.int8-dynamic.onnx]}}
stages:
  - stage: search
    method: autodistil
    space: {{layers: [1, 2], hidden: [16, 32], heads: [2, 4], ffn: [32, 64]}}
    budget: recipe
    supernet: {{subspaces: 1, steps: 2, batch_size: 16, eval_batches: 1}}
    evolution: {{population: 4, generations: 0}}
    top_k: 1
    latency_rounds: 1
  - stage: distill
    max_steps: 2
    batch_size: 16
  - stage: prune
    source: student
    teacher: student
    target: budget
    max_steps: 2
    batch_size: 16
    finetune: {{max_steps: 1, batch_size: 16}}
  - stage: export
    int8: [dynamic]
    models: [student]
  - stage: profile
    devices: [x86-cpu]
    runs: 5
"""
)


def test_budget_driven_search_and_prune(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    """The budget is stated once: search picks on int8 graphs within 1.25x of it (leaving the rest to pruning);
    prune measures int8 costs, or keeps a student that already meets it."""
    recipe = write_recipe(tmp_path, BUDGET_DRIVEN.format(data=sst2_slice, teacher=tiny_bert_dir))
    result = pipeline.run(recipe, out=tmp_path / "out")
    info = _search_info(tmp_path / "out")
    assert info["budget"]["max_latency_ms"] == pytest.approx(50) and info["budget"]["precision"] == "int8"
    assert info["budget"]["percentile"] == "p90" and info["chosen"]["measured_ms"] <= 50
    tables = [p.name for p in (tmp_path / "out" / ".cache" / "latency").glob("transformer-*.json")]
    assert tables and all("-int8-p90" in t for t in tables)  # the tables timed int8 graphs, at the p90
    pruning = result.artifacts["student"].info["pruning"]
    assert pruning["target"]["latency_ms"] == 40 and pruning["target"]["precision"] == "int8"
    if "already_met_ms" in pruning:  # a tiny student is far within 40 ms: kept as it is
        assert pruning["already_met_ms"] <= 40 and pruning["kept_fraction"] == 1.0
    assert "student.int8-dynamic.onnx" in result.artifacts
    spent = result.report["budget_spending"]  # the report says which stage spent which part of the budget
    assert (spent["device"], spent["percentile"], spent["limit_ms"]) == ("x86-cpu", "p90", 40.0)
    assert [s["stage"] for s in spent["steps"]] == ["search", "distill", "prune", "deployed"]
    deployed = spent["steps"][-1]
    assert deployed["artifact"] == "student.int8-dynamic.onnx" and deployed["of_budget"] == pytest.approx(
        result.artifacts["student.int8-dynamic.onnx"].latency["x86-cpu"]["p90_ms"] / 40)
    # the hf teacher is loaded, never evaluated, and has no fp32 graph here: no difference against a made-up 0%
    assert all(s["points_vs_teacher"] is None for s in spent["steps"])
    assert "## Budget: where it went (x86-cpu, p90 <= 40 ms)" in (tmp_path / "out" / "report.md").read_text()


def test_the_pick_meets_the_budget_by_the_median_round() -> None:
    from compress.search.budget import SearchBudget
    from compress.stages.search import _pick

    budget = SearchBudget(max_latency_ms=2.0)
    burst = {"rank": 1, "measured_ms": 1.9, "measured_max_ms": 4.2}  # one round slowed by another process
    lucky = {"rank": 1, "measured_ms": 2.3, "measured_max_ms": 2.4}  # one fast round cannot carry it
    other = {"rank": 2, "measured_ms": 1.5, "measured_max_ms": 1.6}
    assert _pick([burst, other], budget) is burst
    assert _pick([lucky, other], budget) is other
    with pytest.raises(CompressError, match=r"none of the best 1 candidates measures within 2.0 ms .*medians \[2.3\]"):
        _pick([lucky], budget)


RESUMABLE = (
    text_recipe_head("search-resume")
    + """stages:
  - stage: search
    method: autodistil
    space: {{layers: [1, 2], hidden: [16, 32], heads: [2, 4], ffn: [32, 64]}}
    budget: {{max_params: 2.0e6}}
    supernet: {{subspaces: 2, steps: 50, batch_size: 8, eval_batches: 2}}
    top_k: 2
"""
)


def test_a_killed_search_resumes_from_its_trained_super_networks(
    tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = write_recipe(tmp_path, RESUMABLE.format(data=sst2_slice, teacher=tiny_bert_dir))

    def start(out: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "compress", "run", str(recipe), "--out", str(out)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip

    killed = tmp_path / "killed"
    whole = start(tmp_path / "whole")  # the uninterrupted reference, on the other core (one thread each)
    proc = start(killed)
    deadline = time.monotonic() + 300
    while not list(killed.glob(".tmp-*-search-*/checkpoints/supernet-0/supernet.pt")):
        assert proc.poll() is None, f"the run ended first:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no super-network checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # while the second super-network trains
    proc.wait()
    again = start(killed)
    log = again.communicate()[0]
    assert again.returncode == 0, log[-3000:]
    assert "sub-space 1 super-network resumed" in log and "sub-space 2 super-network resumed" not in log
    assert whole.communicate()[0] is not None and whole.returncode == 0
    [a] = killed.glob("*-search-*/student/*.safetensors")
    [b] = (tmp_path / "whole").glob("*-search-*/student/*.safetensors")
    assert a.read_bytes() == b.read_bytes()  # the resumed search chose and extracted the same student
    assert not list(killed.glob(".tmp-*"))  # the checkpoints go with the finished stage
