"""DPHuBERT's hard-concrete masks on the channels of the built-in CNN family, removed with torch-pruning.

Masked groups are the channels that do not carry a residual stream: the output of a plain block's convolution,
the inner channels of a ResNet basic block (first convolution), and the expanded channels of a MobileNetV2
block (expansion and depthwise convolutions). A gate multiplies the channel after its batch norm, so folding
the final gate into that batch norm (``gamma * z``, ``beta * z``) is exact, and channels with ``z = 0`` are
removed through torch-pruning's dependency graph, which also shrinks every layer that consumes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.cnn import CNN, InvertedResidual, PlainBlock, ResidualBlock
from compress.pruning.hardconcrete import HardConcrete


@dataclass
class ChannelGroup:
    """One maskable set of channels: where the gate applies (a BatchNorm) and what one channel costs."""

    name: str
    norm: nn.BatchNorm2d
    conv: nn.Conv2d  # produces the channels (pruned through the dependency graph)
    per_channel: float  # parameters one channel holds, in its producers and its consumer


def _conv_bn(seq: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return seq[0], seq[1]  # type: ignore[index,return-value]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    if not isinstance(model, CNN):
        raise ModelError(
            f"channel masks need the built-in CNN family (got {type(model).__name__}); prune other CNNs with "
            "`method: torch_pruning`."
        )
    groups = []
    for si, stage in enumerate(model.stages):
        blocks: list[nn.Module] = list(stage.children())
        for bi, block in enumerate(blocks):
            name = f"stages.{si}.{bi}"
            if isinstance(block, PlainBlock):
                continue  # its output is the next block's input width: kept whole (no residual, but shared)
            if isinstance(block, ResidualBlock):
                conv, bn = _conv_bn(block.body[0])
                nxt, _ = _conv_bn(block.body[1])
                cost = conv.weight[0].numel() + 2 + nxt.weight[:, 0].numel()
                groups.append(ChannelGroup(name, bn, conv, cost))
            elif isinstance(block, InvertedResidual):
                expand, _ = _conv_bn(block.body[0])
                dw, bn = _conv_bn(block.body[1])
                project, _ = _conv_bn(block.body[2])
                cost = expand.weight[0].numel() + dw.weight[0].numel() + 4 + project.weight[:, 0].numel()
                groups.append(ChannelGroup(name, bn, expand, cost))
    if not groups:
        raise ModelError("this CNN has no maskable channel groups (plain blocks only); use `method: torch_pruning`.")
    return groups


class CnnMasks(nn.Module):
    def __init__(self, model: nn.Module, *, init_keep: float = 0.9) -> None:
        super().__init__()
        self.groups = channel_groups(model)
        self.gates = nn.ModuleList(HardConcrete(g.norm.num_features, init_keep=init_keep) for g in self.groups)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._z: list[torch.Tensor] = []

    def gate_list(self) -> list[HardConcrete]:
        return list(self.gates)  # type: ignore[arg-type]

    def sample(self) -> None:
        self._z = [g() for g in self.gate_list()]

    def deterministic(self) -> list[torch.Tensor]:
        return [g.deterministic() for g in self.gate_list()]

    def expected_size(self) -> torch.Tensor:
        terms = [g.prob_nonzero().sum() * grp.per_channel for g, grp in zip(self.gate_list(), self.groups, strict=True)]
        return torch.stack(terms).sum()

    def full_size(self) -> float:
        return float(sum(g.n * grp.per_channel for g, grp in zip(self.gate_list(), self.groups, strict=True)))

    def attach(self) -> CnnMasks:
        for i, grp in enumerate(self.groups):
            self._handles.append(grp.norm.register_forward_hook(self._hook(i)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, i: int) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
        def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> torch.Tensor:
            z = self._z[i] if module.training and self._z else self.gate_list()[i].deterministic()
            return out * z[None, :, None, None]

        return hook


def prune_cnn_channels(model: nn.Module, masks: CnnMasks, example: torch.Tensor) -> list[int]:
    """Fold the final gates into their batch norms and remove the zero-gated channels (torch-pruning's
    dependency graph shrinks the consumers). Returns the channels kept per group."""
    import torch_pruning as tp

    gates = masks.deterministic()
    masks.detach()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)  # traces with autograd
    kept = []
    for grp, z in zip(masks.groups, gates, strict=True):
        with torch.no_grad():
            grp.norm.weight.mul_(z)
            grp.norm.bias.mul_(z)
        drop = torch.nonzero(z == 0).flatten().tolist()
        if len(drop) == len(z):
            drop = drop[1:]  # keep one channel: a zero-width layer does not export (its output is already 0)
        if drop:
            graph.get_pruning_group(grp.conv, tp.prune_conv_out_channels, idxs=drop).prune()
        kept.append(grp.norm.num_features)
    return kept
