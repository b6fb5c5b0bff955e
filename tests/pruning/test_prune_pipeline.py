"""`prune` (DPHuBERT) end to end on a tiny BERT over real SST-2 slices: smaller for real, exports, runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError
from compress.families import load as load_model
from tests.conftest import TINY_FINETUNE, text_recipe_head, write_recipe

RECIPE = (
    text_recipe_head("prune-sst2")
    + "stages:\n"
    + TINY_FINETUNE
    + """  - stage: prune
    target: {target}
    epochs: 20
    max_steps: 240
    eval_every: 40
    batch_size: 16
    lr: 1.0e-4
    ramp: 0.3
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {{max_steps: 4, batch_size: 16}}
  - stage: export
    int8: [dynamic]
"""
)


def test_dphubert_prunes_to_the_target_and_exports(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, target="{params: 0.5}"))
    result = pipeline.run(recipe, out=tmp_path / "out")
    art = result.artifacts["student"]
    info = art.info["pruning"]
    assert info["kept_fraction"] == pytest.approx(0.5, abs=0.1)
    teacher = load_model(result.artifacts["teacher"].path)
    student = load_model(art.path)  # loads back without any pruning state
    assert student.num_params() < teacher.num_params()
    assert sum(info["structure"]["heads"]) < 4 * 4 or sum(info["structure"]["ffn"]) < 4 * 64
    history = info["masked_training"]["history"]
    assert history[-1]["expected_size"] < history[0]["expected_size"]
    assert {"student.onnx", "student.int8-dynamic.onnx"} <= set(result.artifacts)
    stage = json.loads(next((tmp_path / "out").glob("*-prune-*/stage.json")).read_text())
    assert stage["artifacts"][0]["info"]["pruning"]["structure"] == info["structure"]


def test_target_needs_one_kind(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, target="{params: 0.5, flops: 0.5}")
    with pytest.raises(CompressError, match=r"stages\[1\].target: give exactly one of params, flops"):
        pipeline.validate(write_recipe(tmp_path, text))


def test_missed_target_is_a_warning_and_a_report_flag(
    tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two masked steps cannot remove half of the encoder: the run finishes, and says so twice."""
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, target="{params: 0.5}").replace(
        "max_steps: 240", "max_steps: 2"
    )
    result = pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
    info = result.artifacts["student"].info["pruning"]
    assert info["kept_fraction"] > 0.52 and "where the target was 0.500" in info["target_missed"]
    flags = [f for f in result.report["flags"] if f["kind"] == "target_missed"]
    assert flags and flags[0]["artifact"] == "student"
    assert any("prune: student: pruning kept" in r.message and r.levelname == "WARNING" for r in caplog.records)
    assert "where the target was 0.500" in (tmp_path / "out" / "report.md").read_text()


def test_a_latency_target_is_closed_on_the_measured_graph(
    tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path
) -> None:
    """After the masked phase the pruned graph is measured; out of the band under the limit, the masked phase goes
    on towards a corrected target. A 1% band makes the first check miss it (almost surely): one correction runs."""
    from transformers import AutoConfig

    from compress.devices import resolve_device
    from compress.pruning.latency_costs import COST_ROUNDS, _unpruned
    from compress.search.latency import TransformerLatency

    config = AutoConfig.from_pretrained(tiny_bert_dir)  # the unpruned graph timed once: where the limit goes
    table = TransformerLatency(resolve_device("x86-cpu"), 32, config, tmp_path / "latency.json")
    table.export_full(_unpruned(config), tmp_path / "full.onnx")
    [[full]] = table.measure([tmp_path / "full.onnx"], 1)
    # half the unpruned graph: CI's shared machine has timed this 0.3 ms graph 1.7x slower here (median of 5
    # rounds) than in the stage a minute later, so a limit near the full time could already be met when re-measured
    limit = round(0.5 * full, 4)
    # a band of 0.01% of the limit: the first measurement lands outside it, so the correction always runs here (the
    # band's other side, nothing to correct, is `test_a_measurement_in_the_band_is_not_corrected`)
    target = f"{{latency_ms: {limit}, sequence: 32, corrections: 1, tolerance: 0.0001}}"
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, target=target)
    text = text.replace("max_steps: 240", "max_steps: 40")
    result = pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
    info = result.artifacts["student"].info["pruning"]
    checks, corrections = info["latency_checks"], info["corrections"]
    assert all(c["measured_ms"] > 0 and len(c["ratios"]) == COST_ROUNDS and 0 < c["kept"] <= 1 for c in checks)
    kept = [c for c in checks if c["kept_model"]]  # the model kept: within the limit and closest to it
    assert len(kept) == 1 and info["latency_model"]["measured_ms"] == kept[0]["measured_ms"]
    within = [c["measured_ms"] for c in checks if c["measured_ms"] <= limit]
    assert kept[0]["measured_ms"] == (max(within) if within else min(c["measured_ms"] for c in checks))
    assert info["kept_fraction"] == pytest.approx(kept[0]["kept"])  # restored with its masks when not the last
    first = checks[0]["measured_ms"]
    assert not 0.9999 * limit <= first <= limit
    assert len(checks) == 2 and len(corrections) == 1
    assert corrections[0]["target"] == checks[0]["lagrangian_target"] and corrections[0]["steps"] == 10
    # the expected size's target carries the gap between the deterministic gates and the expectation over
    gap = checks[0]["kept"] - checks[0]["expected"]
    assert checks[0]["lagrangian_target"] == pytest.approx(min(1.0, max(0.01, checks[0]["next_target"] - gap)))
    # the correction moved the size target the way the measurement said
    assert (checks[0]["next_target"] > checks[0]["kept"]) == (first < limit)
    assert corrections[0]["history"][-1]["target"] == pytest.approx(checks[0]["lagrangian_target"])
    assert ("target_missed" in info) == (kept[0]["measured_ms"] > limit)


def test_a_measurement_in_the_band_is_not_corrected() -> None:
    from compress.stages.prune import within_band

    assert within_band(0.95, 1.0, 0.1) and within_band(1.0, 1.0, 0.1) and within_band(0.91, 1.0, 0.1)
    assert not within_band(1.001, 1.0, 0.1)  # over the limit: corrected downwards
    assert not within_band(0.85, 1.0, 0.1)  # latency left unused: corrected upwards


SPEEDUP = (
    text_recipe_head("prune-speedup")
    + """deploy: {{sequence: 32}}
budgets:
  x86-cpu: {{speedup: 1.05, accuracy_drop: 100, artifacts: [student.onnx]}}
stages:
  - stage: prune
    target: budget
    max_steps: 4
    batch_size: 16
    finetune: {{max_steps: 1, batch_size: 16}}
  - stage: export
    models: [student, teacher]
    int8: []
  - stage: profile
    devices: [x86-cpu]
    runs: 5
"""
)


def test_a_speedup_budget_prunes_and_gates_against_the_teacher_timed_with_it(
    tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path
) -> None:
    """`speedup` is a ratio to the teacher: prune times the teacher's fp32 graph in every round of its costs and
    lands on its ms over the factor; the gate divides the teacher's p50 by the artifact's, both from one profile."""
    from compress.errors import BudgetError

    recipe = write_recipe(tmp_path, SPEEDUP.format(data=sst2_slice, teacher=tiny_bert_dir))
    try:
        result = pipeline.run(recipe, out=tmp_path / "out")
    except BudgetError as missed:  # a tiny model may not get 5% faster than its own unpruned self: reported
        result = missed.result
    info = result.artifacts["student"].info["pruning"]
    assert (info["target"]["speedup"], info["target"]["reference"], info["target"]["latency_ms"]) == (
        1.05, "x86-cpu", None)  # fmt: skip
    model = info if "already_met_ms" in info else info["latency_model"]
    assert model["reference_ms"] > 0 and model["limit_ms"] == pytest.approx(model["reference_ms"] / 1.05)
    teacher_ms = result.artifacts["teacher.onnx"].latency["x86-cpu"]["p50_ms"]
    student_ms = result.artifacts["student.onnx"].latency["x86-cpu"]["p50_ms"]
    [check] = [c for c in result.report["budgets"] if c["limit"] == "speedup"]
    assert check["artifact"] == "student.onnx" and check["measured"] == pytest.approx(teacher_ms / student_ms)
    assert check["passed"] == (teacher_ms / student_ms >= 1.05)
    # the profile times both in turns (a speed-up budget: 5 rounds) and keeps each one's fastest round
    for name in ("teacher.onnx", "student.onnx"):
        lat = result.artifacts[name].latency["x86-cpu"]
        assert len(lat["rounds_p50_ms"]) == 5 and lat["p50_ms"] == min(lat["rounds_p50_ms"])
    spent = result.report["budget_spending"]
    assert spent["speedup"] == 1.05 and spent["limit_ms"] == pytest.approx(teacher_ms / 1.05)
