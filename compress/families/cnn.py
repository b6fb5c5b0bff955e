"""The `cnn` family: image classifiers, built-in (`cnn:` stem, stages of plain / ResNet / MobileNetV2 blocks,
linear head) or a user's (`python:` factories that take `pixel_values`).

Built-in members have named stages (feature taps, DisWOT's feature map), maskable channel groups (DPHuBERT's
masks) and a searchable space; any member prunes channels through torch-pruning's dependency graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.families import methods as m
from compress.families.base import Family, register_family
from compress.models.inputs import IMAGES, InputSpec
from compress.models.task_model import TaskModel, build_module

if TYPE_CHECKING:
    from compress.data.dataset import DataBundle
    from compress.pruning.masked import MaskedGroups, PruneGoal
    from compress.quant.ptq import PtqScheme
    from compress.search.space import Arch, Space


@register_family
class CnnFamily(Family):
    name = "cnn"
    modality = "image"
    summary = "CNN image classifiers"
    kinds = ("cnn", "python")
    space_kind = "cnn"

    def feature_modules(self, model: TaskModel) -> list[str]:
        if model.kind != "cnn":
            return []  # a user's CNN: name the modules (`hidden.pairs`, `search.feature`)
        return [n for n, _ in model.module.named_modules() if n.startswith("stages.") and n.count(".") == 1]

    def input_spec(self, model: TaskModel) -> InputSpec:
        return IMAGES

    def ptq_scheme(self, model: TaskModel) -> PtqScheme:
        from compress.quant import ort
        from compress.quant.ptq import PtqScheme

        return PtqScheme(static_ops=tuple(ort.IMAGE_OPS))  # convolutions too; nothing to fuse


# ---- the methods registered for the family --------------------------------------------------------------------
class _Channels(m.ChannelPruning):
    def example_input(self, data: DataBundle) -> torch.Tensor:
        return torch.as_tensor(data.train.features[:1]).float()

    def reference(self, model: TaskModel) -> nn.Module:
        return build_module(model.kind, model.spec)


_CHANNELS = _Channels()


def _masked_groups(model: TaskModel, goal: PruneGoal, where: str, data: DataBundle) -> MaskedGroups:
    """The built-in CNN's channel groups (every conv's output channels, tied across residual adds)."""
    from compress.pruning.masked import ChannelGroups

    return ChannelGroups(model, goal, _CHANNELS.reference(model), _CHANNELS.example_input(data))


class _Search(m.Searcher):
    """DisWOT's CNN space (block, stages, depth, width, kernel, expansion)."""

    def space(self, space: Space | None, teacher: TaskModel, where: str) -> Space:
        from compress.errors import ModelError
        from compress.search.space import CnnSpace

        space = CnnSpace() if space is None else space
        if space.kind != "cnn":
            raise ModelError(f"{where}.space: a {space.kind} space does not fit a CNN teacher; give a CNN space "
                             "(block, stages, depth, width, kernel, expansion).")  # fmt: skip
        return space

    def student(self, space: Space, arch: Arch, teacher: TaskModel, data: DataBundle, seed: int,
                supernet: Any = None) -> TaskModel:  # fmt: skip
        from compress.search.candidates import build_candidate

        # DisWOT's CNN students train from scratch, as in the paper
        return _FAMILY.adopt(build_candidate(space, arch, teacher, in_channels=data.in_channels, seed=seed))

    def input_shape(self, data: DataBundle) -> tuple[int, ...] | None:
        return tuple(torch.as_tensor(data.train.features[:1]).shape[1:])


_FAMILY = CnnFamily()
_NAME = CnnFamily.name
ANY = ("cnn", "python")
m.register(m.PRUNE_DPHUBERT, _NAME, ("cnn",), _masked_groups)
m.register(m.PRUNE_TORCH_PRUNING, _NAME, ANY, _CHANNELS)
m.register(m.SEARCH_DISWOT, _NAME, ANY, _Search())
m.register(m.SEARCH_LATENCY, _NAME, ANY, True)
m.register(m.EXPORT, _NAME, ANY, True)
m.register(m.QUANTIZE_QAT, _NAME, ANY, m.QatDefaults(_NAME))
m.register(m.QUANTIZE_PTQ, _NAME, ANY, True)
m.register(m.QUANTIZE_BUDGET, _NAME, ANY, True)
