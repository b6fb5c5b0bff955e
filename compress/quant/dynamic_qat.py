"""Quantization-aware training for onnxruntime's dynamic int8: train against exactly the rounding the deployed
graph applies, then deploy through the same fused dynamic-int8 path as `int8: [dynamic]`.

Why our own fake quantization here, not NNCF's: NNCF trains static activation ranges and exports QDQ, which
onnxruntime cannot fuse into its integer attention kernel (measured: QAT-KD int8 ran slower than dynamic int8).
onnxruntime's dynamic int8 computes activation ranges per input at run time, so there are no ranges to train; what
QAT can do is let the weights adapt to the rounding. Emulated, per quantized matrix product (every Linear: the
exported graph's MatMul / Gemm, and the fused Attention):

- weights: int8, symmetric, one scale per tensor, ``scale = max|w| / 127``, integers in [-127, 127] (onnxruntime's
  `QInt8` weights with `per_channel=False`, as its quantized graphs show); the Q, K and V projections that the
  fusion concatenates into one Attention weight share one scale (the max over the three);
- inputs: uint8, asymmetric, one range per input tensor computed at run time, ``scale = (max(x, 0) - min(x, 0)) /
  255``, ``zero point = round(-min(x, 0) / scale)`` (onnxruntime's `DynamicQuantizeLinear`). Deployment runs batch
  1, so the range is taken per example.

Gradients pass the rounding straight through (STE). After training the weights stay float: onnxruntime's quantizer
derives the same scales from them, so the deployed graph is the dynamic-int8 graph, as fast by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


def fake_quant_weight(weight: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 with ``scale = absmax / 127`` (zero point 0), straight-through."""
    scale = (absmax / 127).clamp_min(1e-12)
    q = torch.clamp(torch.round(weight / scale), -127, 127) * scale
    return weight + (q - weight).detach()


def fake_quant_input(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric uint8 over each example's whole tensor (the range always holds 0), straight-through."""
    dims = tuple(range(1, x.dim())) if x.dim() > 1 else (0,)
    lo = x.detach().amin(dim=dims, keepdim=True).clamp_max(0.0)
    hi = x.detach().amax(dim=dims, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / 255).clamp_min(1e-12)
    zero = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    return x + (q - x).detach()


class DynamicInt8Linear(nn.Linear):
    """A Linear whose forward sees its input and weight as onnxruntime's dynamic int8 rounds them; ``group``:
    the Linears whose weights share one scale (itself included)."""

    group: list[nn.Linear]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        absmax = torch.stack([m.weight.detach().abs().max() for m in self.group]).max()
        return F.linear(fake_quant_input(x), fake_quant_weight(self.weight, absmax), self.bias)


def prepare(module: nn.Module, shared: Iterable[tuple[str, ...]] = ()) -> int:
    """Turn every Linear of ``module`` into a `DynamicInt8Linear` in place (same parameters); ``shared``: module
    paths whose weights onnxruntime quantizes with one scale. Returns how many were turned."""
    linears = [(n, m) for n, m in module.named_modules() if type(m) is nn.Linear]
    for _, m in linears:
        m.__class__ = DynamicInt8Linear
        cast(DynamicInt8Linear, m).group = [m]
    for paths in shared:
        group: list[nn.Linear] = [cast(DynamicInt8Linear, module.get_submodule(p)) for p in paths]
        for m in group:
            cast(DynamicInt8Linear, m).group = group
    return len(linears)


def strip(module: nn.Module) -> nn.Module:
    """Back to plain Linears holding the trained (float) weights, in place."""
    for m in module.modules():
        if isinstance(m, DynamicInt8Linear):
            del m.group
            m.__class__ = nn.Linear  # type: ignore[assignment]
    return module
