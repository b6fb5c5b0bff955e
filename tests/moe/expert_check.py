"""What the architecture matrices check of moefy on every registered type, in one place."""

from __future__ import annotations

import pytest
import torch

from compress.errors import ModelError
from compress.families import family_of
from compress.families import methods as m
from compress.models.task_model import TaskModel
from compress.moe import convert
from compress.moe.experts import MoeFfn


def split_every_ffn_and_compare(task: TaskModel, inputs: dict[str, torch.Tensor], *, atol: float) -> list[str]:
    """moefy's conversion in place on ``task`` (the FFN blocks its family names, 4 experts each, co-activation
    clusters): all experts together equal each dense FFN, the converted model equals the dense one, the MoE layers
    sit at the blocks' layer paths and no FFN is found again. Returns those layer paths."""
    model = task.module
    blocks = family_of(task).method(m.MOEFY, "moefy", task)(task, "moefy")
    with torch.no_grad():
        dense = model(**inputs).logits
    calib = convert.capture(model, blocks, [inputs], 10_000)
    for i, block in enumerate(blocks):
        moe = MoeFfn.from_dense(block, convert.neuron_groups(block, calib.inputs[i], 4, "coactivation", 0))
        assert torch.allclose(moe.dense(calib.inputs[i]), calib.outputs[i], atol=1e-5)
        convert.install(block, moe)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, dense, atol=atol)
    paths = [b.path for b in blocks]
    assert [p for p, _ in convert.moe_layers(model)] == paths
    with pytest.raises(ModelError, match="no FFN blocks"):  # converted layers are not found again
        convert.find_ffn_blocks(model)
    return paths
