"""`search -> distill -> export` end to end, on digits (DisWOT) and on a tiny BERT over real SST-2 (AutoDistil)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError
from compress.families import load as load_model
from tests.conftest import digits_recipe_head, text_recipe_head, write_recipe

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
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
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
