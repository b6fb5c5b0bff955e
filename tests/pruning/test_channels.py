"""torch-pruning channel pruning of CNNs: lands under the FLOPs target, saves and loads safely, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import CompressError
from compress.families import load as load_model
from compress.models.cnn import CNN, CnnSpec
from compress.pruning.channels import apply_shapes, count, prune_channels, pruned_shapes
from tests.conftest import write_recipe


@pytest.mark.parametrize("block", ["resnet", "mbv2"])
def test_pruned_cnn_is_smaller_and_rebuilds_exactly(block: str) -> None:
    torch.manual_seed(0)
    spec = CnnSpec(widths=[16, 32], depths=[2, 1], block=block, in_channels=1, num_classes=10)
    model, x = CNN(spec).eval(), torch.zeros(1, 1, 8, 8)
    base_macs, base_params = count(model, x)
    info = prune_channels(model, x, keep=0.5, measure="flops", importance="magnitude")
    macs, params = count(model, x)
    assert 0.4 < macs / base_macs <= 0.5 and params < base_params
    assert model.head.out_features == 10  # the classifier keeps its classes
    rebuilt = CNN(spec)
    apply_shapes(rebuilt, pruned_shapes(model, CNN(spec)))
    rebuilt.load_state_dict(model.state_dict())
    xs = torch.randn(5, 1, 8, 8)
    assert torch.equal(rebuilt.eval()(xs), model(xs))
    assert info["history"][-1]["fraction"] == pytest.approx(macs / base_macs)


RECIPE = """
name: prune-digits
seed: 0
data: {format: sklearn_digits}
teacher:
  cnn: {widths: [16, 32], depths: [1, 1], block: resnet}
stages:
  - stage: finetune
    epochs: 1
    batch_size: 64
    lr: 3.0e-3
  - stage: prune
    method: torch_pruning
    target: {flops: 0.5}
    recovery_steps: 3
    epochs: 1
    batch_size: 64
    lr: 1.0e-3
  - stage: export
    int8: []
"""


def test_torch_pruning_stage_end_to_end(tmp_path: Path) -> None:
    result = pipeline.run(write_recipe(tmp_path, RECIPE), out=tmp_path / "out")
    art = result.artifacts["student"]
    assert 0.4 < art.info["pruning"]["kept_fraction"] <= 0.5
    student = load_model(art.path)  # rebuilt from spec + recorded shapes, weights from safetensors
    teacher = load_model(result.artifacts["teacher"].path)
    assert student.num_params() < teacher.num_params()
    meta = json.loads((art.path / "compress_model.json").read_text())
    assert [t["name"] for t in meta["transforms"]] == ["channel_shapes"] and meta["transforms"][0]["args"]
    assert result.artifacts["student.onnx"].metrics["accuracy"] > 0.3


def test_channel_masks_need_a_params_target(tmp_path: Path) -> None:
    text = RECIPE.replace("method: torch_pruning", "method: dphubert").replace("    recovery_steps: 3\n", "")
    text = text.replace("    epochs: 1\n", "    max_steps: 1\n", 1)  # the error comes right after the teacher
    with pytest.raises(CompressError, match="CNN channel masks take a `params` target"):
        pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")


def test_a_key_of_another_method_names_that_method(tmp_path: Path) -> None:
    text = RECIPE.replace("method: torch_pruning", "method: dphubert")
    with pytest.raises(CompressError, match=r"recipe.yaml:15 stages\[1\].recovery_steps: `recovery_steps` applies "
                       r"to `method: torch_pruning`, not `method: dphubert`"):  # fmt: skip
        pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
