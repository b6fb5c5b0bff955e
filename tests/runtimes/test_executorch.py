"""ExecuTorch/XNNPACK: programs exported from the PyTorch models, checked against them, run and profiled by
ExecuTorch's runtime on this machine (the same program a phone app loads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import CompressError
from tests.conftest import digits_recipe_head, text_recipe_head, write_recipe

pytest.importorskip("executorch")

PROFILE = """  - stage: profile
    devices: [x86-cpu, executorch-xnnpack]
    runs: 20
    warmup: 2
"""


def test_cnn_programs_export_match_and_are_profiled(tmp_path: Path) -> None:
    recipe = digits_recipe_head("et-digits") + """  - stage: export
    int8: []
    executorch: {}
""" + PROFILE  # fmt: skip
    result = pipeline.run(write_recipe(tmp_path, recipe), tmp_path / "out")
    fp32, int8 = result.artifacts["teacher.xnnpack.pte"], result.artifacts["teacher.xnnpack-int8.pte"]
    assert fp32.kind == "pte" and fp32.metrics["parity_max_abs_diff"] < 1e-3
    assert fp32.info["operators"]["xnnpack_delegate"] >= 1  # the convolutions run in XNNPACK
    assert int8.metrics["parity_top1_agreement"] >= 0.98 and int8.size_bytes < 0.7 * fp32.size_bytes
    assert fp32.metrics["accuracy"] == pytest.approx(result.artifacts["teacher"].metrics["accuracy"], abs=1e-6)
    for art in (fp32, int8):  # measured by ExecuTorch, not by onnxruntime
        stats = art.latency["executorch-xnnpack"]
        assert stats["runtime"] == "executorch" and stats["provider"] == "XNNPACK" and stats["p50_ms"] > 0
        assert "x86-cpu" not in art.latency
    assert "executorch-xnnpack" not in result.artifacts["teacher.onnx"].latency
    row = next(r for r in result.report["artifacts"] if r["name"] == "teacher.xnnpack-int8.pte")
    assert row["latency"]["executorch-xnnpack"]["baseline"] == "teacher.xnnpack.pte"
    assert row["format"] == "executorch"


def test_text_encoder_program(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    # one encoder layer: XNNPACK lowering time grows with the graph, and one layer has every operator four have
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_bert_dir)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    teacher = tmp_path / "one-layer-bert"
    BertForSequenceClassification(config).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(teacher)
    recipe = text_recipe_head("et-text").format(data=sst2_slice, teacher=teacher) + """stages:
  - stage: export
    int8: []
    executorch: {sequence: 64}
"""  # fmt: skip
    result = pipeline.run(write_recipe(tmp_path, recipe), tmp_path / "out")
    fp32 = result.artifacts["teacher.xnnpack.pte"]
    assert fp32.metrics["parity_max_abs_diff"] < 1e-3  # padded to 64 tokens: same logits as PyTorch
    assert result.artifacts["teacher.xnnpack-int8.pte"].metrics["parity_top1_agreement"] >= 0.9


def test_profiling_executorch_without_programs_is_a_clear_error(tmp_path: Path) -> None:
    recipe = digits_recipe_head("et-missing") + "  - stage: export\n    int8: []\n" + PROFILE
    with pytest.raises(CompressError, match=r"device 'executorch-xnnpack' \(executorch\) runs no ExecuTorch program"):
        pipeline.run(write_recipe(tmp_path, recipe), tmp_path / "out")
