"""Which teacher layer a student layer stands for when nothing says otherwise (every family's default: evenly
spaced), which layers a student of a decoder keeps by Block Influence, and a config cut down to chosen teacher
layers.

Block Influence (ShortGPT, Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than
You Expect", arXiv 2403.03853, eq. 1): for layer i with input hidden states X_i and output X_{i+1},

    BI_i = 1 - E_{x, t} [ X_{i,t} . X_{i+1,t} / (||X_{i,t}|| ||X_{i+1,t}||) ]

over the tokens t of calibration text (padding left out). A layer whose output points where its input did
changes little; the student keeps the ``n`` layers of highest BI, in the teacher's order. Measured on
SmolLM2-135M (30 layers, pycode dev perplexity 10.7 before any training): the 20 evenly spaced layers give 4.8e6
(they drop layer 0, whose BI is 0.98), the 20 of highest BI 70; at 24 layers 87 and 31.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


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


@torch.no_grad()
def block_influence(
    model: nn.Module, layers: list[nn.Module], batches: Iterable[dict[str, torch.Tensor]]
) -> list[float]:
    """BI of every layer in ``layers`` (each called with the hidden states first), from forward passes of
    ``model`` over ``batches`` (``input_ids`` and ``attention_mask``)."""
    sums = [0.0] * len(layers)
    count = 0
    mask = torch.ones(())  # the batch's non-padding positions, set before each forward pass

    def hook(i: int) -> Any:
        def record(_: nn.Module, args: tuple, out: Any) -> None:
            x = args[0]
            y = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
            sums[i] += float((cos * mask).sum())

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for batch in batches:
            ids, attention = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            mask = attention.float()
            count += int(mask.sum())
            model(input_ids=ids, attention_mask=attention, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [1.0 - s / max(count, 1) for s in sums]


def most_influential(scores: list[float], n: int) -> list[int]:
    """The ``n`` layers of highest BI, in order (ties: the earlier layer)."""
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(ranked[:n])
