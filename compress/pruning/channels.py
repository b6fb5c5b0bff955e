"""Dependency-aware channel pruning of CNNs with torch-pruning, and a safe record of the pruned shapes.

torch-pruning's dependency graph finds every layer coupled to a pruned channel (residual adds, depthwise
convolutions, batch norms, the classifier's inputs); its `MetaPruner` removes channel groups ranked by an
importance criterion, a few percent per step. torch-pruning's own serialisation pickles module ``__dict__``s,
which cannot be loaded with ``weights_only=True``; `pruned_shapes` / `apply_shapes` record the new sizes of
standard layers as JSON instead (the model transform `channel_shapes`), so a pruned model is rebuilt from its
spec and loaded from safetensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.transforms import register_transform

TRANSFORM = "channel_shapes"  # the model transform that re-applies `pruned_shapes` on load
Importance = Literal["magnitude", "taylor", "bn_scale"]


def count(model: nn.Module, example: torch.Tensor) -> tuple[float, int]:
    """(MACs, parameters) of one forward pass, counted by torch-pruning."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), int(params)


def _importance(kind: Importance) -> Any:
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "bn_scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    *,
    keep: float,
    measure: Literal["flops", "params"],
    importance: Importance,
    between_steps: Callable[[int], None] | None = None,
    max_steps: int = 60,
) -> dict[str, Any]:
    """Remove channel groups step by step until ``measure`` is at most ``keep`` of the original; the last
    linear layer (the classifier) keeps its outputs. ``between_steps(i)`` runs after each step (recovery
    distillation; Taylor importance needs gradients, which it leaves in place)."""
    import torch_pruning as tp

    base_macs, base_params = count(model, example)
    base = base_macs if measure == "flops" else base_params
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        model, example, importance=_importance(importance), pruning_ratio=0.95, iterative_steps=max_steps,
        ignored_layers=head, global_pruning=False,
    )  # fmt: skip
    history = []
    for step in range(max_steps):
        if importance == "taylor":
            model.zero_grad()
            model(example.repeat(8, *[1] * (example.dim() - 1))).logsumexp(-1).sum().backward()
        pruner.step()
        macs, params = count(model, example)
        now = (macs if measure == "flops" else params) / base
        history.append({"step": step + 1, "macs": macs, "params": params, "fraction": now})
        if between_steps is not None:
            between_steps(step)
        if now <= keep:
            break
    else:
        raise ModelError(f"channel pruning stopped at {now:.3f} of the {measure}, above the target {keep}.")
    return {"base_macs": base_macs, "base_params": base_params, "history": history, "fraction": now}


_SHAPED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def pruned_shapes(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    """The sizes of every standard layer that differ from ``reference`` (the unpruned build)."""
    ref = dict(reference.named_modules())
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        r = ref.get(name)
        same_params = r is not None and all(
            p.shape == q.shape for p, q in zip(m.parameters(recurse=False), r.parameters(recurse=False), strict=False)
        )
        if same_params:
            continue
        if isinstance(m, nn.Conv2d):
            out[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"in": m.in_features, "out": m.out_features}
        else:
            raise ModelError(
                f"pruned module {name!r} ({type(m).__name__}) has no saved-shape support; only Conv2d, "
                "BatchNorm2d and Linear layers can be saved pruned."
            )
    return out


@register_transform(TRANSFORM)
def apply_shapes(model: nn.Module, shapes: dict[str, dict[str, int]]) -> None:
    """Resize the layers named in ``shapes`` (fresh weights: load the pruned state dict afterwards)."""
    modules = dict(model.named_modules())
    for name, s in shapes.items():
        m = modules.get(name)
        if m is None:
            raise ModelError(f"pruned shape for {name!r}, which this model does not have.")
        if isinstance(m, nn.Conv2d):
            conv: Any = nn.Conv2d  # kernel/stride/padding are copied from the built module as they are
            new: nn.Module = conv(
                s["in"], s["out"], m.kernel_size, m.stride, m.padding, m.dilation, s["groups"], m.bias is not None,
                m.padding_mode,
            )  # fmt: skip
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(s["features"], m.eps, m.momentum, m.affine, m.track_running_stats)
        elif isinstance(m, nn.Linear):
            new = nn.Linear(s["in"], s["out"], m.bias is not None)
        else:
            raise ModelError(f"cannot resize {name!r} ({type(m).__name__}).")
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, new)
