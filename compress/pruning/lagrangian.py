"""The Lagrangian size constraint of DPHuBERT (after CoFi and Wang et al., 2020, "Structured Pruning of Large
Language Models"): ``lambda1 (s - t) + lambda2 (s - t)^2`` with ``s`` the expected remaining size and ``t``
the target, both as fractions of the prunable size. The multipliers are trained by gradient *ascent* while
the model and masks descend (a min-max game), which drives ``s`` onto ``t`` instead of merely towards it."""

from __future__ import annotations

import torch
from torch import nn


class Lagrangian(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lambdas = nn.Parameter(torch.zeros(2))

    def forward(self, expected: torch.Tensor, target: float) -> torch.Tensor:
        diff = expected - target
        return self.lambdas[0] * diff + self.lambdas[1] * diff * diff

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """Gradient ascent on the multipliers."""
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.0, maximize=True)


def ramped_target(step: int, ramp_steps: int, target: float, start: float = 1.0) -> float:
    """The size target at ``step``: linear from ``start`` (1: nothing pruned; a correction starts from the last
    target) to ``target`` over ``ramp_steps``."""
    return start + (target - start) * min(1.0, step / max(1, ramp_steps))
