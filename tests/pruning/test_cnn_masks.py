"""DPHuBERT masks on built-in CNN channels: exact removal through torch-pruning, and the stage end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import ModelError
from compress.families import load as load_model
from compress.models.cnn import CNN, CnnSpec
from compress.pruning.channels import apply_shapes, pruned_shapes
from compress.pruning.cnn_masks import CnnMasks, prune_cnn_channels
from tests.conftest import write_recipe


@pytest.mark.parametrize("block", ["resnet", "mbv2"])
def test_removed_channels_match_the_masked_model(block: str) -> None:
    torch.manual_seed(0)
    spec = CnnSpec(widths=[16, 32], depths=[2, 1], block=block, in_channels=1, num_classes=10)
    model = CNN(spec)
    model.train()(torch.randn(32, 1, 8, 8))  # non-trivial batch-norm statistics
    model.eval()
    masks = CnnMasks(model).attach()
    with torch.no_grad():
        for gate in masks.gate_list():
            gate.log_alpha.normal_(0.0, 3.0)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
    before = sum(p.numel() for p in model.parameters())
    kept = prune_cnn_channels(model, masks, torch.zeros(1, 1, 8, 8))
    assert sum(kept) < sum(g.n for g in masks.gate_list())
    assert sum(p.numel() for p in model.parameters()) < before
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
    rebuilt = CNN(spec)
    apply_shapes(rebuilt, pruned_shapes(model, CNN(spec)))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.eval()(x), model(x))


def test_plain_cnns_have_no_maskable_groups() -> None:
    spec = CnnSpec(widths=[8, 16], block="plain", in_channels=1, num_classes=10)
    with pytest.raises(ModelError, match="no maskable channel groups"):
        CnnMasks(CNN(spec))


RECIPE = """
name: cnn-masks
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
    target: {params: 0.5}
    epochs: 10
    batch_size: 64
    lr: 1.0e-3
    ramp: 0.3
    mask_lr: 0.1
    lambda_lr: 0.1
    ce_weight: 0.5
    finetune: {max_steps: 5, batch_size: 64}
  - stage: export
    int8: []
"""


def test_channel_masks_stage_lands_near_the_target(tmp_path: Path) -> None:
    result = pipeline.run(write_recipe(tmp_path, RECIPE), out=tmp_path / "out")
    art = result.artifacts["student"]
    assert art.info["pruning"]["kept_fraction"] == pytest.approx(0.5, abs=0.1)
    assert load_model(art.path).num_params() < load_model(result.artifacts["teacher"].path).num_params()
    assert "student.onnx" in result.artifacts
