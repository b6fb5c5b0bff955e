"""Artifacts measured on the runtime that runs them: logits of any runtime's predictor over a split, parity of an
ONNX export against the PyTorch model, and an ONNX file's artifact with its test accuracy."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from compress.artifacts import Artifact
from compress.config import Strict
from compress.data.dataset import DataBundle, Split
from compress.errors import ExportError
from compress.models.task_model import TaskModel
from compress.runtimes.base import Predictor, get_runtime
from compress.ui import progress

log = logging.getLogger("compress")


def predictor(runtime: str, path: Path) -> Predictor:
    """An in-process predictor of ``path`` on ``runtime``, from the runtime registry (default threads/provider)."""
    return get_runtime(runtime).predictor(path, threads=None, provider=None)


class ParityConfig(Strict):
    """Thresholds of the ONNX vs PyTorch check on real test inputs; the stage fails beyond them."""

    samples: int = Field(128, gt=0, description="Test examples compared.")
    max_abs_diff: float = Field(1e-3, gt=0, description="Largest allowed |logit_onnx - logit_torch|.")
    min_top1_agreement: float = Field(0.99, ge=0, le=1, description="Smallest allowed top-1 agreement.")


def feeds(batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, np.ndarray]:
    return {n: batch[n].numpy() for n in names}


def onnx_logits(predictor: Predictor, split: Split, batch_size: int, label: str) -> np.ndarray:
    """Logits of any runtime's predictor over a split (onnxruntime, OpenVINO, ExecuTorch)."""
    loader = split.loader(batch_size)
    out = []
    with progress(label, len(loader)) as bar:
        for batch in loader:
            out.append(predictor(feeds(batch, predictor.input_names)))
            bar.advance()
    return np.concatenate(out)


def check_parity(model: TaskModel, path: Path, split: Split, cfg: ParityConfig, name: str) -> dict[str, float]:
    sub = split.subset(cfg.samples)
    pred = predictor("onnxruntime", path)
    ort_out = onnx_logits(pred, sub, 32, f"parity {name}")
    model.module.eval()
    with torch.no_grad():
        torch_out = torch.cat([model.logits(b) for b in sub.loader(32)]).numpy()
    diff = float(np.abs(ort_out - torch_out).max())
    agree = float((ort_out.argmax(-1) == torch_out.argmax(-1)).mean())
    if diff > cfg.max_abs_diff or agree < cfg.min_top1_agreement:
        raise ExportError(
            f"ONNX export of {name!r} does not match PyTorch on {len(sub)} test inputs: max abs diff {diff:.2e} "
            f"(allowed {cfg.max_abs_diff:.0e}), top-1 agreement {agree:.3f} (needed {cfg.min_top1_agreement}). "
            "Raise export.parity thresholds only if you accept the difference."
        )
    return {"parity_max_abs_diff": diff, "parity_top1_agreement": agree}


def onnx_artifact(
    name: str,
    path: Path,
    parent: str,
    precision: str,
    params: int | None,
    data: DataBundle,
    eval_batch_size: int,
    fp32_logits: np.ndarray | None,
    extra: dict[str, float],
    stage: str = "export",
) -> tuple[Artifact, np.ndarray]:
    """The artifact of an ONNX file with its test accuracy measured on onnxruntime (and its logits)."""
    pred = predictor("onnxruntime", path)
    logits = onnx_logits(pred, data.test, eval_batch_size, f"accuracy {name}")
    metrics = {"accuracy": float((logits.argmax(-1) == data.test.labels.numpy()).mean()), **extra}
    if fp32_logits is not None:
        metrics["top1_agreement_with_fp32"] = float((logits.argmax(-1) == fp32_logits.argmax(-1)).mean())
    art = Artifact(name, "onnx", path, stage, parent=parent, precision=precision, params=params, metrics=metrics)
    log.info("%s: accuracy %.4f (onnxruntime, test split)", name, metrics["accuracy"])
    return art.finalize(), logits
