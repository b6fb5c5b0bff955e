"""Causal LMs to ONNX with a KV cache (the layout of `runtimes/decoding.py`).

Positions continue from the past length. One graph serves the prompt (prefill: an empty past) and every decode
step (one token, the cache of the previous call): the layout ONNX Runtime GenAI, Optimum and onnxruntime's own
LLM benchmarks use. Exported with the TorchScript exporter through Hugging Face's `DynamicCache`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import ExportError
from compress.models.bert import use_eager_attention
from compress.models.decoder import cache_shape
from compress.models.task_model import TaskModel
from compress.runtimes.decoding import io_names

log = logging.getLogger("compress")


class _WithCache(nn.Module):
    """The model as a function of flat tensors: (ids, mask, *past) -> (logits, *present)."""

    def __init__(self, module: nn.Module, layers: int) -> None:
        super().__init__()
        self.module, self.layers = module, layers
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name goes in 5.40); older releases lack it
        self.cache_key = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)],
                             config=self.module.config)  # type: ignore[arg-type]  # fmt: skip
        start = past[0].shape[2]
        positions = (torch.arange(input_ids.shape[1]) + start).unsqueeze(0).expand(input_ids.shape[0], -1)
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          use_cache=True, **{self.cache_key: cache})  # fmt: skip
        presents: list[torch.Tensor] = []
        layer: Any
        for layer in cache.layers:  # updated in place with this call's keys and values
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def export_decoder_onnx(model: TaskModel, path: Path, *, opset: int) -> None:
    """Export a causal LM with its KV cache and check the file (`onnx.checker`)."""
    import onnx

    module = model.module.eval()
    use_eager_attention(module)
    layout = cache_shape(module)
    layers = layout.layers
    names_in, names_out = io_names(layers)
    ids = torch.randint(0, max(2, model.num_labels), (1, 2))
    # traced with a past; an empty one runs too
    past = [torch.zeros(1, layout.kv_heads[i // 2], 3, layout.head_dim) for i in range(2 * layers)]
    mask = torch.ones(1, 5, dtype=torch.long)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "total"},
                                       "logits": {0: "batch", 1: "sequence"}}  # fmt: skip
    axes |= {n: {0: "batch", 2: "past"} for n in names_in[2:]} | {n: {0: "batch", 2: "total"} for n in names_out[1:]}
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_WithCache(module, layers).eval(), (ids, mask, *past), str(path), input_names=names_in,
                              output_names=names_out, dynamic_axes=axes, opset_version=opset, dynamo=False)  # fmt: skip
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one clear error
        path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"the causal LM {type(module).__name__} does not export to ONNX with a KV cache (opset "
                          f"{opset}): {type(exc).__name__}: {first}") from None  # fmt: skip
