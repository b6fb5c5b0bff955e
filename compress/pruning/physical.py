"""Physical pruning: fold the final gates into the weights and remove every group whose gate is zero.

The result is a smaller dense model (per-layer head and FFN counts recorded in its config, blocks with
nothing left replaced by their bias and LayerNorm) whose outputs equal the masked model's in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.models.structure import drop_encoder_layers, encoder_layers, head_size, resize_encoder


@torch.no_grad()
def prune_encoder(model: nn.Module, gates: dict[str, list[torch.Tensor]]) -> dict[str, list[int]]:
    """Prune ``model`` in place to the non-zero ``gates`` (from `EncoderMasks.deterministic`): layers whose layer
    gate is zero go first (they are the identity), then heads and units; returns the structure that remains and
    the indices of the removed layers."""
    removed = [i for i, z in enumerate(gates.get("layers") or []) if float(z) == 0.0]
    if removed:
        drop_encoder_layers(model, removed)
        gates = {k: [v for i, v in enumerate(vs) if i not in set(removed)] for k, vs in gates.items()}
    d = head_size(model.config)  # type: ignore[attr-defined]
    old = [_snapshot(layer) for layer in encoder_layers(model)]
    keep_heads = [torch.nonzero(z > 0).flatten() for z in gates["heads"]]
    keep_units = [torch.nonzero(z > 0).flatten() for z in gates["units"]]
    structure = {"heads": [len(k) for k in keep_heads], "ffn": [len(k) for k in keep_units]}
    resize_encoder(model, structure["heads"], structure["ffn"])
    for layer, snap, heads, units, zh, zu in zip(
        encoder_layers(model), old, keep_heads, keep_units, gates["heads"], gates["units"], strict=True
    ):
        rows = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        if len(heads):
            attn = layer.attention.self
            for name in ("query", "key", "value"):
                _copy(getattr(attn, name), snap[name][0][rows], snap[name][1][rows])
            scale = zh[heads].repeat_interleave(d)
            _copy(layer.attention.output.dense, snap["attn_out"][0][:, rows] * scale, snap["attn_out"][1])
        else:
            layer.attention.bias.copy_(snap["attn_out"][1])
            _copy_norm(layer.attention.LayerNorm, snap["attn_norm"])
        if len(units):
            _copy(layer.intermediate.dense, snap["inter"][0][units], snap["inter"][1][units])
            _copy(layer.output.dense, snap["out"][0][:, units] * zu[units], snap["out"][1])
        else:
            layer.output.bias.copy_(snap["out"][1])
            _copy_norm(layer.output.LayerNorm, snap["out_norm"])
    return structure | {"removed_layers": removed}


def _snapshot(layer: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    attn = layer.attention.self
    pairs = {
        "query": attn.query, "key": attn.key, "value": attn.value,
        "attn_out": layer.attention.output.dense, "inter": layer.intermediate.dense, "out": layer.output.dense,
        "attn_norm": layer.attention.output.LayerNorm, "out_norm": layer.output.LayerNorm,
    }  # fmt: skip
    return {k: (m.weight.detach().clone(), m.bias.detach().clone()) for k, m in pairs.items()}


def _copy(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear.weight.copy_(weight)
    linear.bias.copy_(bias)


def _copy_norm(norm: nn.LayerNorm, state: tuple[torch.Tensor, torch.Tensor]) -> None:
    norm.weight.copy_(state[0])
    norm.bias.copy_(state[1])
