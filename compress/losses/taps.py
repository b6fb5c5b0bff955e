"""Capture intermediate outputs by module path with forward hooks (torchdistill-style feature taps)."""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn

from compress.errors import StageError


def split_path(path: str) -> tuple[str, int]:
    """``"a.b#1"`` -> (``"a.b"``, 1): the module path and which element of a tuple output to tap (default 0)."""
    module, _, index = path.partition("#")
    return module, int(index or 0)


def output_tensor(out: object, index: int = 0) -> torch.Tensor:
    """Element ``index`` of a module output (HF layers return tuples; a bare tensor is element 0)."""
    if isinstance(out, torch.Tensor) and index == 0:
        return out
    if isinstance(out, tuple | list) and len(out) > index and isinstance(out[index], torch.Tensor):
        return out[index]
    raise StageError(f"cannot tap element {index} of a module whose output is {type(out).__name__}")


def check_paths(model: nn.Module, paths: list[str], role: str) -> None:
    names = dict(model.named_modules())
    missing = [p for p in paths if split_path(p)[0] not in names]
    if missing:
        sample = ", ".join(list(names)[1:8])
        raise StageError(
            f"{role} has no module {', '.join(map(repr, missing))} to tap (modules include: {sample}, ...)."
        )


class FeatureTaps:
    """``with FeatureTaps(model, paths) as feats: model(x)`` fills ``feats[path]`` with each output;
    ``"path#i"`` taps element ``i`` of a tuple output (e.g. the attention probabilities of a HF attention)."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.model, self.paths = model, list(dict.fromkeys(paths))
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> dict[str, torch.Tensor]:
        modules = dict(self.model.named_modules())
        for path in self.paths:
            self._handles.append(modules[split_path(path)[0]].register_forward_hook(self._hook(path)))
        return self.features

    def _hook(self, path: str):  # noqa: ANN202
        index = split_path(path)[1]

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            self.features[path] = output_tensor(output, index)

        return hook

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
