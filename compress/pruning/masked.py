"""DPHuBERT's masked groups behind one small interface, so the `prune` stage runs the same masked-distillation
loop on every family that has them: a family hands the stage a `MaskedGroups` (heads, attention blocks, FFN units
and FFN blocks of a Transformer encoder; the maskable channels of a built-in CNN) sized against a `PruneGoal`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import StageError
from compress.models.structure import TRANSFORM as ENCODER_TRANSFORM
from compress.models.structure import current_structure
from compress.models.task_model import TaskModel
from compress.pruning.encoder_masks import EncoderMasks, GroupCosts, flop_costs, param_costs
from compress.pruning.physical import prune_encoder


@dataclass(frozen=True)
class PruneGoal:
    """What to keep (exactly one of params, flops, latency). A latency target arrives measured: the ms of each
    group on the device (``costs``) and the fraction of the variable latency that fits the limit (``latency``),
    both values the stage measured before the groups are built."""

    params: float | None = None
    flops: float | None = None
    sequence: int = 128
    latency: float | None = None
    costs: GroupCosts | None = None

    @property
    def unit(self) -> str:
        return "parameters" if self.params is not None else "FLOPs" if self.flops is not None else "ms"


class MaskedGroups(ABC):
    """Hard-concrete masks on a model's prunable groups, attached to it."""

    target: float  # fraction of the full size to keep
    full: float  # full size in the goal's unit

    @abstractmethod
    def parameters(self) -> list[nn.Parameter]:
        """The mask parameters (their own optimiser)."""

    @abstractmethod
    def sample(self) -> None:
        """Draw the gates for the next training forward pass."""

    @abstractmethod
    def expected(self) -> torch.Tensor:
        """Expected kept fraction of the full size (differentiable)."""

    @abstractmethod
    def finalize(self) -> tuple[float, dict[str, Any]]:
        """Make the gates deterministic, remove the masks and the zero-gated groups for real, record the
        change on the model (a registered transform); returns the kept fraction and the structure left."""

    def candidate(self) -> tuple[nn.Module, float] | None:
        """What `finalize` would make now, as a separate copy (the model keeps its masks and goes on training),
        and its kept fraction: what a latency target's closed loop exports and measures. None where the family's
        pruned graphs are not measured (the cost model alone sets the size)."""
        return None


class _TransformerGroups(MaskedGroups):
    """Masks on a Transformer's projections (`ProjectionGates`), sized by per-group costs."""

    masks: Any  # EncoderMasks or DecoderMasks: sample, expected_size(costs), parameters
    costs: GroupCosts

    def parameters(self) -> list[nn.Parameter]:
        return list(self.masks.parameters())

    def sample(self) -> None:
        self.masks.sample()

    def expected(self) -> torch.Tensor:
        return self.masks.expected_size(self.costs) / self.full


class EncoderGroups(_TransformerGroups):
    """Heads, attention blocks, FFN units and FFN blocks of a BERT-family encoder."""

    def __init__(self, model: TaskModel, goal: PruneGoal) -> None:
        self.model = model
        cfg: Any = model.module.config
        if goal.params is not None:
            self.costs, self.target = param_costs(cfg), goal.params
        elif goal.flops is not None:
            self.costs, self.target = flop_costs(cfg, goal.sequence), goal.flops
        else:
            assert goal.costs is not None and goal.latency is not None
            self.costs, self.target = goal.costs, goal.latency
        self.masks = EncoderMasks(model.module).attach(model.module)
        self.full = self.masks.full_size(self.costs)

    def finalize(self) -> tuple[float, dict[str, Any]]:
        gates = self.masks.deterministic()
        self.masks.detach()
        structure = prune_encoder(self.model.module, gates)
        self.model.record(ENCODER_TRANSFORM, current_structure(self.model.module))
        return self._kept(structure), current_structure(self.model.module) | {
            "removed_layers": structure["removed_layers"]
        }

    def candidate(self) -> tuple[nn.Module, float]:
        module = self.model.module
        gates = self.masks.deterministic()
        # a fresh instance with the same weights: a deep copy would carry the masks' and the losses' hooks along
        copy = type(module)(deepcopy(module.config))  # type: ignore[operator]  # pruning rewrites its config
        copy.load_state_dict(module.state_dict())
        structure = prune_encoder(copy.eval(), gates)
        return copy, self._kept(structure)

    def _kept(self, structure: dict[str, Any]) -> float:
        c = self.costs
        kept = sum(structure["heads"]) * c.per_head + sum(structure["ffn"]) * c.per_unit
        kept += len(structure["heads"]) * c.per_layer
        return kept / self.full


class DecoderGroups(_TransformerGroups):
    """Key/value groups (grouped-query aware) and MLP units of a causal LM's decoder layers."""

    def __init__(self, model: TaskModel, goal: PruneGoal) -> None:
        from compress.models.decoder import decoder_layers
        from compress.models.decoder_layout import layout_of
        from compress.pruning.decoder_masks import DecoderMasks, decoder_flop_costs, decoder_param_costs

        self.model = model
        cfg: Any = model.module.config
        gated = layout_of(decoder_layers(model.module)[0]).gated
        if goal.params is not None:
            self.costs, self.target = decoder_param_costs(cfg, gated=gated), goal.params
        elif goal.flops is not None:
            self.costs, self.target = decoder_flop_costs(cfg, goal.sequence, gated=gated), goal.flops
        else:
            assert goal.costs is not None and goal.latency is not None
            self.costs, self.target = goal.costs, goal.latency
        self.masks = DecoderMasks(model.module).attach(model.module)
        self.full = self.masks.full_size(self.costs)

    def finalize(self) -> tuple[float, dict[str, Any]]:
        from compress.models.decoder import STRUCTURE, decoder_structure
        from compress.pruning.decoder_masks import prune_decoder

        gates = self.masks.deterministic()
        self.masks.detach()
        structure = prune_decoder(self.model.module, gates)
        self.model.record(STRUCTURE, decoder_structure(self.model.module))
        kept = (sum(structure["kv_heads"]) * self.costs.per_head + sum(structure["ffn"]) * self.costs.per_unit)
        return kept / self.full, structure


class ChannelGroups(MaskedGroups):
    """The maskable channels of a built-in CNN, removed through torch-pruning's dependency graph."""

    def __init__(self, model: TaskModel, goal: PruneGoal, reference: nn.Module, example: torch.Tensor) -> None:
        from compress.pruning.cnn_masks import CnnMasks

        if goal.params is None:
            raise StageError("prune.target: CNN channel masks take a `params` target; use torch_pruning for `flops`.")
        self.model, self.reference, self.example = model, reference, example
        self.masks = CnnMasks(model.module).attach()
        self.full, self.target = self.masks.full_size(), goal.params

    def parameters(self) -> list[nn.Parameter]:
        return list(self.masks.parameters())

    def sample(self) -> None:
        self.masks.sample()

    def expected(self) -> torch.Tensor:
        return self.masks.expected_size() / self.full

    def finalize(self) -> tuple[float, dict[str, Any]]:
        from compress.pruning.channels import TRANSFORM, pruned_shapes
        from compress.pruning.cnn_masks import prune_cnn_channels

        kept_channels = prune_cnn_channels(self.model.module, self.masks, self.example)
        groups = self.masks.groups
        kept = sum(k * g.per_channel for k, g in zip(kept_channels, groups, strict=True)) / self.full
        self.model.record(TRANSFORM, pruned_shapes(self.model.module, self.reference))
        return kept, {g.name: k for g, k in zip(groups, kept_channels, strict=True)}
