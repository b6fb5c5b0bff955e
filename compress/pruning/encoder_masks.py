"""Structured hard-concrete masks on a Hugging Face encoder (the layouts of `compress.models.encoder_layout`: BERT's,
DeBERTa-v2's, DistilBERT's): heads, whole attention blocks, FFN units, whole FFN blocks (DPHuBERT's prunable groups
for Transformer layers), and whole layers.

Masks act through forward pre-hooks on the two output projections of each layer: the attention output
projection sees each head's context vector scaled by ``z_head * z_attention_block``; the FFN output
projection sees each intermediate unit scaled by ``z_unit * z_ffn_block``. A removed group therefore
contributes nothing but the projection's bias, which is exactly what the physically pruned model keeps.

These layers are post-LayerNorm: with every head and unit gone it still computes ``LN(LN(x + b1) + b2)``, which
is not the identity and keeps a layer's fixed cost (LayerNorms, residual adds, kernel launches; on int8 graphs
that per-layer cost is a large share). So each layer also has a gate on its output, applied by a forward hook:
``out = z_layer * layer(x) + (1 - z_layer) * x``. A layer whose final gate is zero is exactly the identity and is
removed from the model (and from the exported graph). Final layer gates are binary, so what is kept is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.encoder_layout import encoder_layout_of
from compress.models.structure import current_structure, encoder_layers, head_size
from compress.pruning.hardconcrete import HardConcrete, ProjectionGates


@dataclass(frozen=True)
class GroupCosts:
    """Parameters, FLOPs or ms of one head and one FFN unit of a layer, and of the layer itself beyond them (what
    only removing the whole layer saves)."""

    per_head: float
    per_unit: float
    per_layer: float = 0.0


def param_costs(config: Any) -> GroupCosts:
    """Weights and biases a head (Q, K, V rows; output-projection columns) and an FFN unit hold; a layer's own
    (two output biases, two LayerNorms)."""
    hidden, d = config.hidden_size, head_size(config)
    return GroupCosts(per_head=4 * hidden * d + 3 * d, per_unit=2 * hidden + 1, per_layer=6 * hidden)


def flop_costs(config: Any, sequence: int) -> GroupCosts:
    """FLOPs per example at ``sequence`` tokens: projections, attention scores and context of one head; the
    two FFN matrix products of one unit (2 FLOPs per multiply-add)."""
    hidden, d = config.hidden_size, head_size(config)
    per_head = 2 * sequence * 4 * hidden * d + 2 * 2 * sequence * sequence * d
    return GroupCosts(per_head=per_head, per_unit=2 * sequence * 2 * hidden)


class EncoderMasks(ProjectionGates):
    """Hard-concrete gates for every prunable group of ``model``'s encoder layers."""

    def __init__(self, model: nn.Module, *, init_keep: float = 0.9) -> None:
        super().__init__()
        structure = current_structure(model)
        if 0 in structure["heads"] or 0 in structure["ffn"]:
            raise ModelError("the model already has removed blocks; prune it from its unpruned form.")
        self.d = head_size(model.config)  # type: ignore[attr-defined]
        self.heads = nn.ModuleList(HardConcrete(n, init_keep=init_keep) for n in structure["heads"])
        self.units = nn.ModuleList(HardConcrete(f, init_keep=init_keep) for f in structure["ffn"])
        n_layers = len(structure["heads"])
        self.attention_blocks = HardConcrete(n_layers, init_keep=init_keep)
        self.ffn_blocks = HardConcrete(n_layers, init_keep=init_keep)
        self.whole_layers = HardConcrete(n_layers, init_keep=init_keep)

    # ---- gates ---------------------------------------------------------------------------------
    def sample(self) -> None:
        """Draw the gates used by the next forward pass (deterministic gates in eval mode)."""
        att, ffn = self.attention_blocks(), self.ffn_blocks()
        gates = self.layer_gates()
        self._z = {
            "heads": [h() * att[i] for i, (h, _) in enumerate(gates)],
            "units": [u() * ffn[i] for i, (_, u) in enumerate(gates)],
            "layers": list(self.whole_layers()),
        }

    def expected_size(self, costs: GroupCosts) -> torch.Tensor:
        """Expected remaining size: for each layer, ``P(layer) * (per_layer + P(block) * sum_h P(head_h) *
        per_head + the same for FFN units)`` (independent gates: the probability of a kept head is the product)."""
        p_att, p_ffn = self.attention_blocks.prob_nonzero(), self.ffn_blocks.prob_nonzero()
        p_layer = self.whole_layers.prob_nonzero()
        total = p_att.new_zeros(())
        for i, (h, u) in enumerate(self.layer_gates()):
            inside = p_att[i] * h.prob_nonzero().sum() * costs.per_head
            inside = inside + p_ffn[i] * u.prob_nonzero().sum() * costs.per_unit
            total = total + p_layer[i] * (costs.per_layer + inside)
        return total

    def layer_gates(self) -> list[tuple[HardConcrete, HardConcrete]]:
        """(head gates, FFN-unit gates) of every layer."""
        return [(h, u) for h, u in zip(self.heads, self.units, strict=True)]  # type: ignore[misc]

    def full_size(self, costs: GroupCosts) -> float:
        return float(sum(costs.per_layer + h.n * costs.per_head + u.n * costs.per_unit for h, u in self.layer_gates()))

    def deterministic(self) -> dict[str, list[torch.Tensor]]:
        """Final gates (eval mode): a head or unit is kept when its gate is non-zero; a layer gate is 0 or 1 (a
        kept layer is the layer, unscaled), and at least one layer stays."""
        att, ffn = self.attention_blocks.deterministic(), self.ffn_blocks.deterministic()
        layers = (self.whole_layers.deterministic() > 0).float()
        if not layers.any():
            layers[int(self.whole_layers.log_alpha.argmax())] = 1.0
        gates = self.layer_gates()
        return {
            "heads": [h.deterministic() * att[i] for i, (h, _) in enumerate(gates)],
            "units": [u.deterministic() * ffn[i] for i, (_, u) in enumerate(gates)],
            "layers": list(layers),
        }

    # ---- hooks ---------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> EncoderMasks:
        for i, layer in enumerate(encoder_layers(model)):
            attention, ffn = encoder_layout_of(layer).outputs(layer)
            self.hook_on(attention, "heads", i)
            self.hook_on(ffn, "units", i)
            # first among the layer's forward hooks: feature taps and Hugging Face's hidden-state capture see the
            # gated output
            self._handles.append(layer.register_forward_hook(self._layer_hook(i), prepend=True, with_kwargs=True))
        return self

    def _layer_hook(self, i: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
            if module.training and not self._z:
                raise RuntimeError("EncoderMasks.sample() must run before a training forward pass")
            z = self._z["layers"][i] if module.training else self.deterministic()["layers"][i]
            x = args[0] if args else kwargs["hidden_states"]
            if isinstance(output, tuple):
                return (z * output[0] + (1 - z) * x, *output[1:])
            return z * output + (1 - z) * x

        return hook

    def widen(self, kind: str, z: torch.Tensor) -> torch.Tensor:
        return z.repeat_interleave(self.d) if kind == "heads" else z
