"""DPHuBERT's structured masks on a causal LM's decoder layers (the layouts of `compress.models.decoder_layout`:
LLaMA-style, OPT, GPT-2): key/value groups and MLP units (gated or not).

Grouped-query aware: a prunable attention group is one key/value head together with the query heads that read
it, so every layer keeps the model's query-per-key ratio and its cache shrinks with its heads. Masks act through
forward pre-hooks on each layer's two output projections, as for encoders: the attention's (``o_proj``) sees each
query head's context scaled by its group's gate, the MLP's (``down_proj``) each intermediate unit scaled by its
gate. A zero gate removes the group's whole contribution (an output bias is added whatever is kept), which is
exactly what the physically pruned model computes. A layer whose groups and units are all gated off is removed
whole where that is exact (pre-norm layers without output biases: the masked layer is then the identity); any
other layer keeps at least one group and one unit (its most probable), since a layer without attention would
leave its KV cache slot empty.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.models.decoder import decoder_layers, decoder_structure
from compress.models.decoder_layout import layout_of
from compress.pruning.encoder_masks import GroupCosts
from compress.pruning.hardconcrete import HardConcrete, ProjectionGates


def _shape(config: Any) -> tuple[int, int, int]:
    """(hidden, head size, query heads per key/value head)."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    d = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.hidden_size), int(d), int(heads // kv)


def decoder_param_costs(config: Any, *, gated: bool = True) -> GroupCosts:
    """Weights of one key/value group (its query, key and value rows, its output-projection columns) and of one
    MLP unit (gate and up rows, down column; no gate row in a plain MLP); ``per_head`` is per group."""
    hidden, d, g = _shape(config)
    return GroupCosts(per_head=hidden * d * (2 * g + 2), per_unit=(3 if gated else 2) * hidden)


def decoder_flop_costs(config: Any, sequence: int, *, gated: bool = True) -> GroupCosts:
    """FLOPs per sequence of ``sequence`` tokens: a group's projections, attention scores and context; a unit's
    three matrix products (two in a plain MLP; 2 FLOPs per multiply-add)."""
    hidden, d, g = _shape(config)
    per_group = 2 * sequence * hidden * d * (2 * g + 2) + 2 * 2 * sequence * sequence * d * g
    return GroupCosts(per_head=per_group, per_unit=2 * sequence * (3 if gated else 2) * hidden)


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
        self.biased = [any(getattr(p, "bias", None) is not None for p in layout_of(layer).outputs(layer))
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
            attention, mlp = layout_of(layer).outputs(layer)
            self.hook_on(attention, "groups", i)
            self.hook_on(mlp, "units", i)
        return self

    def widen(self, kind: str, z: torch.Tensor) -> torch.Tensor:
        # one gate per key/value head: its query heads, each head's d channels
        return z.repeat_interleave(self.g * self.d) if kind == "groups" else z


@torch.no_grad()
def prune_decoder(model: nn.Module, gates: dict[str, list[torch.Tensor]]) -> dict[str, list[int]]:
    """Remove the zero-gated groups and units of ``model`` for real, folding the kept gates into the output
    projections, and the layers with none left; returns the structure left (per remaining layer: key/value
    heads, FFN units; and the indices of the removed layers)."""
    from compress.models.decoder import drop_decoder_layers

    _, d, g = _shape(model.config)  # type: ignore[attr-defined]
    keep_groups = [torch.nonzero(z > 0).flatten() for z in gates["groups"]]
    keep_units = [torch.nonzero(z > 0).flatten() for z in gates["units"]]
    removed = [i for i, (kg, ku) in enumerate(zip(keep_groups, keep_units, strict=True)) if not len(kg) and not len(ku)]
    if removed:
        drop_decoder_layers(model, removed)
        kept = [i for i in range(len(keep_groups)) if i not in removed]
        keep_groups, keep_units = [keep_groups[i] for i in kept], [keep_units[i] for i in kept]
        gates = {k: [v[i] for i in kept] for k, v in gates.items()}
    old = [{n: (w.clone(), None if b is None else b.clone()) for n, (w, b) in layout_of(layer).read(layer).items()}
           for layer in decoder_layers(model)]  # fmt: skip
    structure = {"kv_heads": [len(k) for k in keep_groups], "ffn": [len(k) for k in keep_units]}
    for layer, w, groups, units, zg, zu in zip(decoder_layers(model), old, keep_groups, keep_units, gates["groups"],
                                              gates["units"], strict=True):  # fmt: skip
        kv_rows = (groups[:, None] * d + torch.arange(d)).reshape(-1)
        heads = (groups[:, None] * g + torch.arange(g)).reshape(-1)
        q_rows = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        rows = {"q": q_rows, "k": kv_rows, "v": kv_rows, "gate": units, "up": units}
        new = {name: (w[name][0][idx], None if w[name][1] is None else w[name][1][idx])  # Qwen2's, OPT's biases
               for name, idx in rows.items() if name in w}  # fmt: skip
        # the kept gates fold into the output projections' columns; an output bias is added once, whatever is kept
        new["o"] = (w["o"][0][:, q_rows] * zg[groups].repeat_interleave(g * d), w["o"][1])
        new["down"] = (w["down"][0][:, units] * zu[units], w["down"][1])
        layout_of(layer).write(layer, new, heads=len(heads))
    return structure | {"removed_layers": removed}

