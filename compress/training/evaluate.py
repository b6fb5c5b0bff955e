"""Inference helpers shared by every stage: logits over a split (sharded across processes), accuracy."""

from __future__ import annotations

import torch

from compress.data.dataset import Split
from compress.models.task_model import TaskModel
from compress.training.engine import Engine
from compress.ui import progress


@torch.no_grad()
def predict_logits(
    model: TaskModel, split: Split, batch_size: int, label: str = "", engine: Engine | None = None
) -> torch.Tensor:
    """Logits of every example of ``split``, in order, on the CPU. With an engine, on its device, and under
    several processes each computes a contiguous shard and all gather the whole (equal to one process's)."""
    model.module.eval()
    part = split
    if engine is not None and engine.distributed:
        lo, hi = engine.shard(len(split))
        part = Split(split.name, split.features[lo:hi], split.labels[lo:hi], split.pad_id)
    out = []
    loader = part.loader(batch_size)
    with progress(label or f"inference on {split.name}", len(loader)) as bar:
        for batch in loader:
            if engine is not None:
                batch = engine.to_device(batch)
            out.append(model.logits(batch).float().cpu())
            bar.advance()
    logits = torch.cat(out) if out else torch.zeros((0, model.num_labels))
    return engine.gather(logits) if engine is not None else logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def evaluate(model: TaskModel, split: Split, batch_size: int, engine: Engine | None = None) -> float:
    return accuracy(predict_logits(model, split, batch_size, f"evaluating on {split.name}", engine), split.labels)
