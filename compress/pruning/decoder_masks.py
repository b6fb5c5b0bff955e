"""DPHuBERT's structured masks on a causal LM (LLaMA-style decoder layers): key/value groups and SwiGLU FFN units.

Grouped-query aware: a prunable attention group is one key/value head together with the query heads that read
it, so every layer keeps the model's query-per-key ratio and its cache shrinks with its heads. Masks act through
forward pre-hooks on each layer's two output projections, as for encoders: ``o_proj`` sees each query head's
context scaled by its group's gate, ``down_proj`` each intermediate unit scaled by its gate. The projections have
no bias, so a zero gate removes the group's whole contribution, which is exactly what the physically pruned
model computes. A layer whose groups and units are all gated off is removed whole (pre-norm layers without
output biases: the masked layer is then exactly the identity); any other layer keeps at least one group and one
unit (its most probable), since a layer without attention would leave its KV cache slot empty.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.models.decoder import decoder_layers, decoder_structure
from compress.pruning.encoder_masks import GroupCosts
from compress.pruning.hardconcrete import HardConcrete, ProjectionGates


def _shape(config: Any) -> tuple[int, int, int]:
    """(hidden, head size, query heads per key/value head)."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    d = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.hidden_size), int(d), int(heads // kv)


def decoder_param_costs(config: Any) -> GroupCosts:
    """Weights of one key/value group (its query, key and value rows, its output-projection columns) and of one
    SwiGLU unit (gate and up rows, down column); ``per_head`` is per group."""
    hidden, d, g = _shape(config)
    return GroupCosts(per_head=hidden * d * (2 * g + 2), per_unit=3 * hidden)


def decoder_flop_costs(config: Any, sequence: int) -> GroupCosts:
    """FLOPs per sequence of ``sequence`` tokens: a group's projections, attention scores and context; a unit's
    three matrix products (2 FLOPs per multiply-add)."""
    hidden, d, g = _shape(config)
    per_group = 2 * sequence * hidden * d * (2 * g + 2) + 2 * 2 * sequence * sequence * d * g
    return GroupCosts(per_head=per_group, per_unit=2 * sequence * 3 * hidden)


def _keep_one(gate: HardConcrete, z: torch.Tensor) -> torch.Tensor:
    """The deterministic gates, with the most probable group kept when all would be zero."""
    if bool((z > 0).any()):
        return z
    z = z.clone()
    best = int(gate.log_alpha.detach().argmax())
    z[best] = float(torch.sigmoid(gate.log_alpha.detach()[best]))
    return z


class DecoderMasks(ProjectionGates):
    """Hard-concrete gates on every layer's key/value groups and FFN units."""

    def __init__(self, model: nn.Module, *, init_keep: float = 0.9) -> None:
        super().__init__()
        structure = decoder_structure(model)
        _, self.d, self.g = _shape(model.config)  # type: ignore[attr-defined]
        self.groups = nn.ModuleList(HardConcrete(n, init_keep=init_keep) for n in structure["kv_heads"])
        # a layer whose output projections add a bias is never the identity: it stays
        self.biased = [layer.self_attn.o_proj.bias is not None or layer.mlp.down_proj.bias is not None
                       for layer in decoder_layers(model)]  # fmt: skip
        self.units = nn.ModuleList(HardConcrete(f, init_keep=init_keep) for f in structure["ffn"])

    def pairs(self) -> list[tuple[HardConcrete, HardConcrete]]:
        return [(g, u) for g, u in zip(self.groups, self.units, strict=True)]  # type: ignore[misc]

    def sample(self) -> None:
        self._z = {"groups": [g() for g, _ in self.pairs()], "units": [u() for _, u in self.pairs()]}

    def expected_size(self, costs: GroupCosts) -> torch.Tensor:
        total = next(self.parameters()).new_zeros(())
        for g, u in self.pairs():
            total = total + g.prob_nonzero().sum() * costs.per_head + u.prob_nonzero().sum() * costs.per_unit
        return total

    def full_size(self, costs: GroupCosts) -> float:
        return float(sum(g.n * costs.per_head + u.n * costs.per_unit for g, u in self.pairs()))

    def deterministic(self) -> dict[str, list[torch.Tensor]]:
        z = [(g.deterministic(), u.deterministic()) for g, u in self.pairs()]
        empty = [not bool((zg > 0).any() or (zu > 0).any()) and not biased
                 for (zg, zu), biased in zip(z, self.biased, strict=True)]  # fmt: skip
        if all(empty):  # the model keeps its most probable layer
            best = max(range(len(z)), key=lambda i: float(self.pairs()[i][0].log_alpha.max()))
            empty[best] = False
        groups, units = [], []
        for (g, u), (zg, zu), gone in zip(self.pairs(), z, empty, strict=True):
            groups.append(zg if gone else _keep_one(g, zg))
            units.append(zu if gone else _keep_one(u, zu))
        return {"groups": groups, "units": units}

    def attach(self, model: nn.Module) -> DecoderMasks:
        for i, layer in enumerate(decoder_layers(model)):
            self.hook_on(layer.self_attn.o_proj, "groups", i)
            self.hook_on(layer.mlp.down_proj, "units", i)
        return self

    def widen(self, kind: str, z: torch.Tensor) -> torch.Tensor:
        # one gate per key/value head: its query heads, each head's d channels
        return z.repeat_interleave(self.g * self.d) if kind == "groups" else z


@torch.no_grad()
def prune_decoder(model: nn.Module, gates: dict[str, list[torch.Tensor]]) -> dict[str, list[int]]:
    """Remove the zero-gated groups and units of ``model`` for real, folding the kept gates into the output
    projections, and the layers with none left; returns the structure left (per remaining layer: key/value
    heads, FFN units; and the indices of the removed layers)."""
    from compress.models.decoder import drop_decoder_layers, resize_decoder

    _, d, g = _shape(model.config)  # type: ignore[attr-defined]
    keep_groups = [torch.nonzero(z > 0).flatten() for z in gates["groups"]]
    keep_units = [torch.nonzero(z > 0).flatten() for z in gates["units"]]
    removed = [i for i, (kg, ku) in enumerate(zip(keep_groups, keep_units, strict=True)) if not len(kg) and not len(ku)]
    if removed:
        drop_decoder_layers(model, removed)
        kept = [i for i in range(len(keep_groups)) if i not in removed]
        keep_groups, keep_units = [keep_groups[i] for i in kept], [keep_units[i] for i in kept]
        gates = {k: [v[i] for i in kept] for k, v in gates.items()}
    old = [{n: (m.weight.detach().clone(), m.bias.detach().clone() if m.bias is not None else None)
            for n, m in _projections(layer).items()} for layer in decoder_layers(model)]  # fmt: skip
    structure = {"kv_heads": [len(k) for k in keep_groups], "ffn": [len(k) for k in keep_units]}
    resize_decoder(model, structure)
    for layer, w, groups, units, zg, zu in zip(decoder_layers(model), old, keep_groups, keep_units, gates["groups"],
                                              gates["units"], strict=True):  # fmt: skip
        kv_rows = (groups[:, None] * d + torch.arange(d)).reshape(-1)
        heads = (groups[:, None] * g + torch.arange(g)).reshape(-1)
        q_rows = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        new = _projections(layer)
        rows = {"q": q_rows, "k": kv_rows, "v": kv_rows, "gate": units, "up": units}
        for name, idx in rows.items():
            new[name].weight.copy_(w[name][0][idx])
            if new[name].bias is not None:  # Qwen2's query, key and value biases
                new[name].bias.copy_(w[name][1][idx])
        new["o"].weight.copy_(w["o"][0][:, q_rows] * zg[groups].repeat_interleave(g * d))
        new["down"].weight.copy_(w["down"][0][:, units] * zu[units])
        for name in ("o", "down"):  # an output bias is added once, whatever is kept
            if new[name].bias is not None:
                new[name].bias.copy_(w[name][1])
    return structure | {"removed_layers": removed}


def _projections(layer: Any) -> dict[str, nn.Linear]:
    a, m = layer.self_attn, layer.mlp
    return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj, "gate": m.gate_proj, "up": m.up_proj,
            "down": m.down_proj}  # fmt: skip
