"""Structural changes a saved model carries (pruned shapes, Mixture-of-Experts layers), rebuilt on load by
whoever made them.

A library that changes a model's structure registers a transform here under a name, with the function that
re-applies it to a freshly built model (weights are loaded afterwards). The stage that applied it records
``{"name", "args"}`` in the model's ``transforms`` list; `TaskModel.load` re-applies the list in order. So
`models/` needs to know no library: pruning and MoE register themselves (importing `compress.families` imports
every registering library).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from compress.errors import ModelError
from compress.registry import Registry

Apply = Callable[[nn.Module, Any], None]
TRANSFORMS: Registry[Apply] = Registry("model transform")


def register_transform(name: str) -> Callable[[Apply], Apply]:
    """Register how to re-apply a structural change named ``name`` to a freshly built module."""
    return TRANSFORMS.register(name)


def apply_transforms(module: nn.Module, transforms: list[dict[str, Any]], where: str) -> None:
    """Re-apply the recorded transforms, in the order they were applied."""
    for t in transforms:
        name = t.get("name") if isinstance(t, dict) else None
        if not isinstance(name, str) or name not in TRANSFORMS:
            known = ", ".join(TRANSFORMS.names()) or "none"
            raise ModelError(
                f"{where}: the saved model records a transform {name!r} that this installation cannot rebuild "
                f"(known: {known}). Load it with the compress version that made it, or import the library that "
                "registers it (`import compress.families` registers the built-in ones)."
            )
        TRANSFORMS.get(name)(module, t.get("args"))
