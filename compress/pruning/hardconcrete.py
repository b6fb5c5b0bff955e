"""Hard-concrete gates: the L0 relaxation of Louizos et al., 2018 ("Learning Sparse Neural Networks
through L0 Regularization"), as used by DPHuBERT for structured masks.

A gate ``z`` in [0, 1] per prunable group. Training samples ``u ~ U(0, 1)``,
``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``, stretches it to ``(l, r) = (-0.1, 1.1)`` and clamps:
``z = min(1, max(0, s (r - l) + l))``, so exact zeros and ones have non-zero probability and gradients reach
``log_alpha``. The probability that a gate is non-zero, the expected L0 norm, is
``P(z > 0) = sigmoid(log_alpha - beta log(-l / r))``. At evaluation the gate is deterministic and keeps
exactly the expected number of groups (as in DPHuBERT's and CoFi's code): ``z = sigmoid(0.8 log_alpha / beta)``
with the ``round(n - sum P(z > 0))`` smallest values set to zero. (Thresholding the stretched gate at zero
instead would keep every group whose probability is merely lowered, and miss the size target.)
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

BETA, LEFT, RIGHT = 2.0 / 3.0, -0.1, 1.1


class HardConcrete(nn.Module):
    """``n`` independent gates; ``forward()`` returns a sample (training) or the deterministic gate (eval)."""

    def __init__(self, n: int, *, init_keep: float = 0.9) -> None:
        super().__init__()
        # start with P(z > 0) ~ init_keep: log_alpha = logit(init_keep) + beta log(-l/r)
        start = math.log(init_keep / (1 - init_keep)) + BETA * math.log(-LEFT / RIGHT)
        self.log_alpha = nn.Parameter(torch.full((n,), start))

    @property
    def n(self) -> int:
        return self.log_alpha.numel()

    def prob_nonzero(self) -> torch.Tensor:
        """``P(z_i > 0)``: each gate's expected contribution to the L0 norm (differentiable)."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LEFT / RIGHT))

    def forward(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
            return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)
        return self.deterministic()

    def deterministic(self) -> torch.Tensor:
        with torch.no_grad():
            zeros = round(self.n - float(self.prob_nonzero().sum()))
            soft = torch.sigmoid(self.log_alpha / BETA * 0.8)
            if zeros > 0:
                soft[torch.topk(soft, zeros, largest=False).indices] = 0.0
            return soft


class ProjectionGates(nn.Module, metaclass=ABCMeta):
    """Gates applied by forward pre-hooks on a layer's output projections (DPHuBERT's masks on Transformers): the
    projection's input is scaled by the gates of the groups it reads, sampled in training (`sample`), the
    deterministic ones in eval mode (evaluation and export checks see what pruning will keep)."""

    def __init__(self) -> None:
        super().__init__()
        self._z: dict[str, list[torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @abstractmethod
    def deterministic(self) -> dict[str, list[torch.Tensor]]:
        """The final gates, per kind of group, per layer."""

    def widen(self, kind: str, z: torch.Tensor) -> torch.Tensor:
        """One gate per group -> one scale per input channel of the projection (default: already one each)."""
        return z

    def hook_on(self, projection: nn.Module, kind: str, layer: int) -> None:
        self._handles.append(projection.register_forward_pre_hook(self._hook(kind, layer)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, kind: str, layer: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], tuple[torch.Tensor]]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
            if module.training:
                if not self._z:
                    raise RuntimeError(f"{type(self).__name__}.sample() must run before a training forward pass")
                z = self._z[kind][layer]
            else:
                z = self.deterministic()[kind][layer]
            return (inputs[0] * self.widen(kind, z).to(inputs[0].dtype),)

        return hook
