"""Physical pruning: fold the final gates into the weights and remove every group whose gate is zero.

The result is a smaller dense model (per-layer head and FFN counts recorded in its config, blocks with
nothing left replaced by their bias and LayerNorm) whose outputs equal the masked model's in eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.models.encoder_layout import encoder_layout_of
from compress.models.structure import drop_encoder_layers, encoder_layers, head_size, resize_encoder


@torch.no_grad()
def prune_encoder(model: nn.Module, gates: dict[str, list[torch.Tensor]]) -> dict[str, list[int]]:
    """Prune ``model`` in place to the non-zero ``gates`` (from `EncoderMasks.deterministic`): layers whose layer
    gate is zero go first (they are the identity), then heads and units; returns the structure that remains and
    the indices of the removed layers. Every layout (`compress.models.encoder_layout`) the same way."""
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
    for layer, (snap, norms), heads, units, zh, zu in zip(
        encoder_layers(model), old, keep_heads, keep_units, gates["heads"], gates["units"], strict=True
    ):
        layout = encoder_layout_of(layer)
        gone_attention, gone_ffn = layout.removed_blocks(layer)
        rows = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        new = {}
        for name, (w, b) in snap.items():
            if name == "o":  # the kept gates fold into the output projections' columns; their bias stays whole
                if len(heads):
                    new[name] = (w[:, rows] * zh[heads].repeat_interleave(d), b)
            elif name == "down":
                if len(units):
                    new[name] = (w[:, units] * zu[units], b)
            elif name in UNIT_ROWS:
                if len(units):
                    new[name] = (w[units], None if b is None else b[units])
            elif len(heads):  # query, key, value and any other head-row projection (DeBERTa's position ones)
                new[name] = (w[rows], None if b is None else b[rows])
        layout.load(layer, new)
        if not len(heads):
            _removed(gone_attention, snap["o"][1], norms.get("attention"))
        if not len(units):
            _removed(gone_ffn, snap["down"][1], norms.get("ffn"))
    return structure | {"removed_layers": removed}


UNIT_ROWS = ("up", "gate")  # rows of FFN units (a GLU's two halves)
Pair = tuple[torch.Tensor, torch.Tensor | None]


def _snapshot(layer: Any) -> tuple[dict[str, Pair], dict[str, Pair]]:
    """Copies of the layer's canonical projections and of the LayerNorms inside its blocks."""
    layout = encoder_layout_of(layer)
    norms: dict[str, Pair] = {}
    for k, m in layout.norms(layer).items():
        norm: Any = m
        norms[k] = (norm.weight.detach().clone(), norm.bias.detach().clone())
    return layout.read(layer), norms


def _removed(block: Any, bias: torch.Tensor | None, norm: Pair | None) -> None:
    """A removed block keeps its output projection's bias, and its LayerNorm where it held one."""
    if bias is not None:
        block.bias.copy_(bias)
    if norm is not None:
        block.LayerNorm.weight.copy_(norm[0])
        block.LayerNorm.bias.copy_(norm[1])
