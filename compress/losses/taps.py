"""Capture intermediate outputs by module path with forward hooks (torchdistill-style feature taps)."""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn

from compress.errors import StageError


def output_tensor(out: object) -> torch.Tensor:
    """The first tensor of a module output (HF layers return tuples)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise StageError(f"cannot tap a module whose output is {type(out).__name__}")


def check_paths(model: nn.Module, paths: list[str], role: str) -> None:
    names = dict(model.named_modules())
    missing = [p for p in paths if p not in names]
    if missing:
        sample = ", ".join(list(names)[1:8])
        raise StageError(
            f"{role} has no module {', '.join(map(repr, missing))} to tap (modules include: {sample}, ...)."
        )


class FeatureTaps:
    """``with FeatureTaps(model, paths) as feats: model(x)`` fills ``feats[path]`` with each output."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.model, self.paths = model, list(dict.fromkeys(paths))
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> dict[str, torch.Tensor]:
        modules = dict(self.model.named_modules())
        for path in self.paths:
            self._handles.append(modules[path].register_forward_hook(self._hook(path)))
        return self.features

    def _hook(self, path: str):  # noqa: ANN202
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            self.features[path] = output_tensor(output)

        return hook

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
