"""`quantize: {method: budget}`: the accuracy part of the recipe budget picks the quantization method."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError
from compress.stages.quantize import budget_choice
from tests.conftest import text_recipe_head, write_recipe

RECIPE = (
    text_recipe_head("quantize-budget")
    + """budgets:
  x86-cpu: {{accuracy_drop: DROP}}
stages:
  - stage: quantize
    method: budget
    source: teacher
    order: [dynamic, static]
  - stage: profile
    devices: [x86-cpu]
    runs: 5
"""
)


def test_the_first_method_within_the_accuracy_budget_is_kept(tmp_path: Path, tiny_bert_dir: Path,
                                                             sst2_slice: Path) -> None:  # fmt: skip
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir).replace("DROP", "100")
    result = pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
    art = result.artifacts["teacher.int8-dynamic.onnx"]  # dynamic meets a 100-point budget: static is never made
    choice = art.info["quantize_budget"]
    assert choice["accuracy_drop"] == 100 and choice["chosen"] == "dynamic" and choice["met"]
    assert [t["method"] for t in choice["tried"]] == ["dynamic"]
    assert "teacher.int8-static.onnx" not in result.artifacts and art.path.is_file()
    assert not list((tmp_path / "out").glob("*-quantize-*/teacher.int8-static.onnx"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Quantization chosen by the accuracy budget: `teacher.int8-dynamic.onnx`" in report
    assert "| dynamic | teacher.int8-dynamic.onnx |" in report


def test_a_method_that_misses_is_not_kept_unless_none_meets(tmp_path: Path, tiny_bert_dir: Path,
                                                            sst2_slice: Path) -> None:  # fmt: skip
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir).replace("DROP", "0")
    text = text.replace("order: [dynamic, static]", "order: [dynamic, qat_dynamic]\n    qat_epochs: 0.1")
    result = pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
    (name,) = [n for n in result.artifacts if n.startswith("teacher.int8")]
    choice = result.artifacts[name].info["quantize_budget"]
    tried = choice["tried"]
    assert all(t["meets"] == (t["points_vs_teacher"] >= -1e-9) for t in tried)
    # whichever way this machine's kernels round: candidates are made in order and stop at the first that meets
    assert not any(t["meets"] for t in tried[:-1]) and [t["method"] for t in tried] == ["dynamic", "qat_dynamic"][
        : len(tried)] and (tried[-1]["meets"] or len(tried) == 2)  # fmt: skip
    assert choice["chosen"] == budget_choice(tried)["method"] and choice["met"] == tried[-1]["meets"]
    suffix = {"qat_dynamic": "qat-dynamic"}.get(choice["chosen"], choice["chosen"])
    assert name == f"teacher.int8-{suffix}.onnx"
    assert len(list((tmp_path / "out").glob("*-quantize-*/teacher.int8-*.onnx"))) == 1  # the others are deleted


def test_the_budget_keeps_the_first_that_meets_else_the_most_accurate() -> None:
    def t(method: str, dev: float, meets: bool) -> dict:
        return {"method": method, "artifact": method, "dev_accuracy": dev, "meets": meets}

    assert budget_choice([t("dynamic", 0.80, False), t("static", 0.85, True)])["method"] == "static"
    assert budget_choice([t("dynamic", 0.90, True), t("static", 0.95, True)])["method"] == "dynamic"
    missed = [t("dynamic", 0.80, False), t("static", 0.84, False), t("qat", 0.82, False)]
    assert budget_choice(missed)["method"] == "static"  # none meets: the most accurate
    assert budget_choice([t("dynamic", 0.80, False), t("qat", 0.80, False)])["method"] == "dynamic"  # first of equals


def test_no_accuracy_budget_is_a_clear_error(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir).replace("accuracy_drop: DROP", "p50_ms: 5")
    with pytest.raises(CompressError, match=r"stages\[0\].accuracy_drop: `method: budget` takes the accuracy part"):
        pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
