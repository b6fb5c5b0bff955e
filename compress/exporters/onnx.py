"""PyTorch -> ONNX export (dynamic batch and sequence axes) with onnx.checker."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from compress.data.dataset import Batch
from compress.errors import ExportError
from compress.models.bert import use_eager_attention
from compress.models.task_model import TaskModel

log = logging.getLogger("compress")
MIN_OPSET = 17


class _LogitsOnly(nn.Module):
    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.module = model.module  # registered, so the exporter sees its weights as parameters
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model.logits(dict(zip(self.model.input_names(), inputs, strict=True)))


def export_onnx(model: TaskModel, sample: Batch, path: Path, *, opset: int = MIN_OPSET) -> None:
    """Export ``model`` to ``path`` and check it. Uses the TorchScript-based exporter (``dynamo=False``):
    it handles `dynamic_axes` on Hugging Face encoders in one pass and needs no extra packages."""
    import onnx

    model.module.eval()
    use_eager_attention(model.module)
    names = model.input_names()
    args = tuple(sample[n][:2] for n in names)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LogitsOnly(model).eval(),
                args,
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=model.spec_of_inputs().dynamic_axes(),
                opset_version=opset,
                dynamo=False,
            )
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one clear error
        path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(
            f"the {model.kind} model ({type(model.module).__name__}) does not export to ONNX opset {opset}: "
            f"{type(exc).__name__}: {first}. Operators without an ONNX mapping or data-dependent control flow "
            "are the usual causes; simplify the forward or raise `opset`."
        ) from None
