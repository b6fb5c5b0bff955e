"""Models from Python factories (`package.module:function`) with checkpoints, and models that cannot export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compress import pipeline
from compress.errors import ExportError, ModelError
from tests.conftest import write_recipe
from tests.fixtures.factories import small_cnn

RECIPE = """
name: user-model
data: {{format: sklearn_digits}}
teacher:
  python: tests.fixtures.factories:{factory}
  kwargs: {{channels: 8}}
  {checkpoint}
stages:
  - stage: finetune
    epochs: {steps}
    batch_size: 64
    lr: 1.0e-2
  - stage: export
    int8: [static]
    calibration_samples: 32
"""


def test_python_factory_teacher_with_checkpoint_runs_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_file(small_cnn(8).state_dict(), str(tmp_path / "weights.safetensors"))
    recipe = write_recipe(
        tmp_path, RECIPE.format(factory="small_cnn", checkpoint="checkpoint: weights.safetensors", steps=8)
    )
    result = pipeline.run(recipe, tmp_path / "out")
    assert result.artifacts["teacher"].info["family"] == "python"
    assert result.artifacts["teacher.onnx"].metrics["parity_max_abs_diff"] < 1e-4
    assert result.artifacts["teacher.int8-static.onnx"].metrics["accuracy"] > 0.3


def test_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    save_file(small_cnn(4).state_dict(), str(tmp_path / "weights.safetensors"))  # 4 channels, recipe says 8
    recipe = write_recipe(
        tmp_path, RECIPE.format(factory="small_cnn", checkpoint="checkpoint: weights.safetensors", steps=0.1)
    )
    with pytest.raises(ModelError, match=r"checkpoint .*weights.safetensors does not fit the model"):
        pipeline.run(recipe, tmp_path / "out")


def test_model_that_does_not_export_names_the_model_and_leaves_no_artifact(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path, RECIPE.format(factory="unexportable", checkpoint="", steps=0.1).replace("kwargs: {channels: 8}", "")
    )
    with pytest.raises(ExportError, match=r"python model \(SpectralNet\) does not export to ONNX opset 17.*fft"):
        pipeline.run(recipe, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*export*"))
    assert not list((tmp_path / "out").rglob("*.onnx"))
