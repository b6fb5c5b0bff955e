"""Which teacher layer a student layer stands for when nothing says otherwise (every family's default), and a
config cut down to chosen teacher layers."""

from __future__ import annotations

from typing import Any


def evenly_spaced(student_layers: int, teacher_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the last one, e.g. 3 of 6 -> [1, 3, 5]."""
    step = teacher_layers / student_layers
    return [round(step * (i + 1)) - 1 for i in range(student_layers)]


def keep_config_layers(cfg: Any, layers: list[int]) -> None:
    """Give a model config (decoder or encoder) the teacher layers ``layers`` (by index, in order): the layer count,
    and the per-layer settings that follow it (``layer_types``: Qwen2's, Gemma 2's and Gemma 3's sliding or full
    attention per layer, which transformers requires to have one entry per layer)."""
    types = getattr(cfg, "layer_types", None)
    if isinstance(types, list):
        cfg.layer_types = [types[i] for i in layers]
    cfg.num_hidden_layers = len(layers)
