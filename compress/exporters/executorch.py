"""PyTorch -> ExecuTorch program (.pte) delegated to XNNPACK, the CPU backend ExecuTorch ships for Android, iOS
and Linux boards; fp32, or int8 through XNNPACK's own PT2E quantizer (dynamically quantized activations,
per-channel int8 weights). Shapes are static (batch and sequence fixed at export), as mobile deployments are.

Hugging Face encoders are exported with the attention mask turned into the additive 4-D mask in the wrapper:
transformers' own mask construction indexes with tensors that PT2E quantization breaks, and the 4-D form is
what the model computes anyway (checked: identical logits)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.errors import ExportError, RuntimeMissingError
from compress.models.bert import use_eager_attention
from compress.models.task_model import TaskModel

log = logging.getLogger("compress")
EXTRA = "executorch"


class _Program(nn.Module):
    """Positional tensors in, logits out; text models get the additive attention mask built here."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.module = model.module
        self.text_hf = model.family == "hf" and model.modality == "text"
        self.names = model.input_names()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.text_hf:
            ids, mask = inputs
            additive = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
            return self.module(input_ids=ids, attention_mask=additive).logits  # type: ignore[no-any-return]
        return self.model.logits(dict(zip(self.names, inputs, strict=True)))


def example_inputs(model: TaskModel, batch: int, sequence: int, sample: dict[str, torch.Tensor]) -> tuple:
    """Static-shape inputs: text padded / cut to ``sequence``, images at their own size."""
    if model.modality == "text":
        ids = torch.zeros(batch, sequence, dtype=torch.long)
        mask = torch.zeros(batch, sequence, dtype=torch.long)
        n = min(sequence, sample["input_ids"].shape[1])
        rows = min(batch, sample["input_ids"].shape[0])
        ids[:rows, :n] = sample["input_ids"][:rows, :n]
        mask[:rows, :n] = sample["attention_mask"][:rows, :n]
        return ids, mask
    pixels = sample["pixel_values"][:1]
    return (pixels.expand(batch, *pixels.shape[1:]).contiguous(),)


def _libs() -> Any:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise RuntimeMissingError(
            f"ExecuTorch export needs the executorch package ({exc}): pip install 'edge-compress[{EXTRA}]'."
        ) from None
    return XnnpackPartitioner, to_edge_transform_and_lower


def export_pte(model: TaskModel, args: tuple, path: Path, *, int8: bool) -> dict[str, int]:
    """Write ``path``; returns operator counts: how many ran delegated to XNNPACK and which stayed portable."""
    partitioner, lower = _libs()
    model.module.eval()
    use_eager_attention(model.module)
    program = _Program(model).eval()
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            exported = torch.export.export(program, args)
            if int8:
                exported = torch.export.export(_quantize(exported.module(), args), args)
            edge = lower(exported, partitioner=[partitioner()])
            counts = _delegation(edge.exported_program().graph)
            buffer = edge.to_executorch().buffer
    except RuntimeMissingError:
        raise
    except Exception as exc:  # noqa: BLE001 - export/lowering failures become one clear error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(
            f"the {model.family} model ({type(model.module).__name__}) does not export to ExecuTorch/XNNPACK"
            f"{' int8' if int8 else ''}: {type(exc).__name__}: {first}"
        ) from None
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer)
    tmp.replace(path)  # never a half-written program
    return counts


def _quantize(module: nn.Module, args: tuple) -> nn.Module:
    """XNNPACK's PT2E quantizer: int8 per-channel weights, int8 activations quantized at run time."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(module, quantizer)  # type: ignore[arg-type]
    prepared(*args)
    return convert_pt2e(prepared)  # type: ignore[no-any-return]


def _delegation(graph: torch.fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        key = "xnnpack_delegate" if "call_delegate" in name else name.split(".")[0]
        if key in ("getitem",):
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts
