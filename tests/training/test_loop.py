"""How long a stage trains: `max_steps` is honoured, never silently cut to one pass over the data."""

from __future__ import annotations

import torch

from compress.config import TrainSchedule
from compress.training.loop import total_steps


def test_max_steps_alone_sets_the_length() -> None:
    assert total_steps(TrainSchedule(max_steps=500, batch_size=10), 100) == 500  # 50 passes over 100 examples


def test_epochs_alone_and_both() -> None:
    assert total_steps(TrainSchedule(epochs=2, batch_size=10), 100) == 20
    assert total_steps(TrainSchedule(epochs=2, max_steps=5, batch_size=10), 100) == 5  # the smaller wins
    assert total_steps(TrainSchedule(epochs=0.5, max_steps=500, batch_size=10), 100) == 5


def test_adamw_is_fused_on_a_cpu_and_updates_like_the_default() -> None:
    from compress.training.loop import adamw

    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [torch.randn_like(w) for w in weights]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    plain_params = [torch.nn.Parameter(w.clone()) for w in weights]
    groups = [{"params": fused_params[:1], "weight_decay": 0.01}, {"params": fused_params[1:], "weight_decay": 0.0}]
    fused = adamw(groups, lr=1e-2)
    plain = torch.optim.AdamW([{"params": plain_params[:1], "weight_decay": 0.01},
                               {"params": plain_params[1:], "weight_decay": 0.0}], lr=1e-2)  # fmt: skip
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for _ in range(3):
        for opt, params in ((fused, fused_params), (plain, plain_params)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b, w in zip(fused_params, plain_params, weights, strict=True):
        assert not torch.equal(a, w) and torch.allclose(a, b, atol=1e-6)
