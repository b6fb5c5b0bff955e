"""Models from Python factories (`package.module:function`) with checkpoints, and models that cannot export."""

from __future__ import annotations

import sys
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
    assert result.artifacts["teacher"].info["kind"] == "python"
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


def _checkpoint_recipe(tmp_path: Path, name: str) -> Path:
    return write_recipe(tmp_path, RECIPE.format(factory="small_cnn", checkpoint=f"checkpoint: {name}", steps=0.1))


def test_unreadable_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_file(small_cnn(8).state_dict(), str(tmp_path / "good.safetensors"))
    good = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    torch.save(small_cnn(8).state_dict(), tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:300])
    import argparse

    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pt")  # an object, not tensors
    cases = {
        "truncated.safetensors": r"is not a readable safetensors file \(truncated or corrupt\?\)",
        "garbage.safetensors": "is not a readable safetensors file",
        "truncated.pt": "is not a readable torch file",
        "pickled.pt": r"holds pickled Python objects, which are never loaded \(they can run code\)",
    }
    for name, message in cases.items():
        with pytest.raises(ModelError, match=message):
            pipeline.run(_checkpoint_recipe(tmp_path, name), tmp_path / "out")
    assert not list((tmp_path / "out").glob("00-teacher-*"))  # no stage trusted a bad checkpoint


BAD_FACTORIES = '''
import torch


def needs_args(channels, depth):
    return torch.nn.Linear(64, 10)


def broken():
    raise RuntimeError("weights server unreachable")
'''


@pytest.mark.parametrize(
    "factory, kwargs, at_validate, at_run",
    [
        ("needs_args", "{}", r"bad_factories.py:5\) needs 'channels', 'depth'; set `kwargs`",
         r"needs_args\(channels, depth\) cannot be called with the recipe's kwargs \(none\): missing .*'channels'"),
        ("needs_args", "{channels: 8, depth: 2, width: 3}", r"takes no argument 'width'",
         r"kwargs \(channels, depth, width\): got an unexpected keyword argument 'width'"),
        ("missing", "{}", r"defines no 'missing'", r"module 'bad_factories' has no attribute 'missing'"),
        ("broken", "{}", None, r"python factory 'bad_factories:broken' raised RuntimeError: weights server"),
    ],
)  # fmt: skip
def test_factory_mistakes_are_named_by_validate_without_running_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str, kwargs: str, at_validate: str | None, at_run: str
) -> None:
    (tmp_path / "bad_factories.py").write_text(BAD_FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bad_factories", raising=False)
    recipe = write_recipe(tmp_path, f"""
name: f
data: {{format: sklearn_digits}}
teacher:
  python: bad_factories:{factory}
  kwargs: {kwargs}
stages:
  - stage: finetune
""")
    if at_validate is None:  # fine on paper: validate says which code `run` will execute, without running it
        found = "\n".join(pipeline.validate(recipe))
        assert f"imports and runs bad_factories ({tmp_path / 'bad_factories.py'})" in found
        assert "a recipe is code" in found
        assert "bad_factories" not in sys.modules
    else:
        with pytest.raises(ModelError, match=at_validate):
            pipeline.validate(recipe)
        assert "bad_factories" not in sys.modules
    with pytest.raises(ModelError, match=at_run):
        pipeline.run(recipe, tmp_path / "out")


def test_factory_with_a_syntax_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "typo_factories.py").write_text("def build(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "typo_factories", raising=False)
    recipe = write_recipe(tmp_path, RECIPE.format(factory="x", checkpoint="", steps=0.1).replace(
        "tests.fixtures.factories:x", "typo_factories:build").replace("kwargs: {channels: 8}", ""))  # fmt: skip
    with pytest.raises(ModelError, match=r"typo_factories:build': .*typo_factories.py:1: syntax error"):
        pipeline.validate(recipe)
    with pytest.raises(ModelError, match=r"typo_factories.py:1: syntax error"):
        pipeline.run(recipe, tmp_path / "out")


def test_model_that_does_not_take_the_inputs_fails_before_training(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE.format(factory="sequential", checkpoint="", steps=1).replace(
        "kwargs: {channels: 8}", ""))  # fmt: skip
    with pytest.raises(ModelError, match=r"teacher.python tests.fixtures.factories:sequential: the model's forward "
                                         r"fails on a real batch \(pixel_values \(2, 1, 8, 8\)\).*must accept "
                                         r"pixel_values as keyword arguments"):  # fmt: skip
        pipeline.run(recipe, tmp_path / "out")
    student = """name: s
data: {format: sklearn_digits}
teacher:
  cnn: {widths: [8]}
stages:
  - stage: distill
    student: {python: "tests.fixtures.factories:sequential"}
"""
    with pytest.raises(ModelError, match=r"distill.student.python tests.fixtures.factories:sequential: the model's"):
        pipeline.run(write_recipe(tmp_path, student, "student.yaml"), tmp_path / "out2")


def test_failure_inside_a_library_is_one_paragraph_with_the_traceback_in_the_log(tmp_path: Path) -> None:
    from tests.test_cli import cli

    recipe = write_recipe(tmp_path, """name: lib
data: {format: sklearn_digits}
teacher:
  python: tests.fixtures.factories:fixed_reshape
stages:
  - stage: prune
    method: torch_pruning
    target: {params: 0.5}
    max_steps: 2
    recovery_steps: 1
""")
    proc = cli("run", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "stage 1 (prune) failed on source 'teacher' inside factories.py: RuntimeError" in proc.stderr
    assert "The full traceback is in" in proc.stderr
    assert "Traceback (most recent call last)" in (tmp_path / "out" / "compress.log").read_text()
    assert not list((tmp_path / "out").glob("01-prune-*")) and not list((tmp_path / "out").glob(".tmp-*"))
