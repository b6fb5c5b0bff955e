"""The Lagrangian term alone drives the expected size onto the target: a min-max game, not a soft penalty."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.pruning.encoder_masks import EncoderMasks, param_costs
from compress.pruning.lagrangian import Lagrangian, ramped_target


def test_ramped_target() -> None:
    assert ramped_target(0, 10, 0.3) == 1.0
    assert ramped_target(5, 10, 0.3) == pytest.approx(0.65)
    assert ramped_target(50, 10, 0.3) == pytest.approx(0.3)


@pytest.mark.parametrize("target", [0.5, 0.25])
def test_lagrangian_pulls_expected_size_to_the_target(target: float) -> None:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    masks = EncoderMasks(BertForSequenceClassification(cfg))
    costs = param_costs(cfg)
    full = masks.full_size(costs)
    lag = Lagrangian()
    opt = torch.optim.AdamW(masks.parameters(), lr=0.05, weight_decay=0.0)
    lag_opt = lag.optimizer(0.05)
    start = float(masks.expected_size(costs) / full)
    for step in range(400):
        expected = masks.expected_size(costs) / full
        loss = lag(expected, ramped_target(step, 50, target))
        opt.zero_grad()
        lag_opt.zero_grad()
        loss.backward()
        opt.step()
        lag_opt.step()
    final = float(masks.expected_size(costs) / full)
    assert start > 0.7  # init_keep 0.9 on gates, on blocks and on layers: 0.9 ** 3
    assert final == pytest.approx(target, abs=0.02)
    assert lag.lambdas.abs().sum() > 0  # the multipliers moved (ascent)
