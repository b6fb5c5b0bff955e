"""Inference helpers shared by every stage: logits over a split, accuracy."""

from __future__ import annotations

import torch

from compress.data.dataset import Split
from compress.models.task_model import TaskModel
from compress.ui import progress


@torch.no_grad()
def predict_logits(model: TaskModel, split: Split, batch_size: int, label: str = "") -> torch.Tensor:
    model.module.eval()
    out = []
    loader = split.loader(batch_size)
    with progress(label or f"inference on {split.name}", len(loader)) as bar:
        for batch in loader:
            out.append(model.logits(batch).float().cpu())
            bar.advance()
    return torch.cat(out)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def evaluate(model: TaskModel, split: Split, batch_size: int) -> float:
    return accuracy(predict_logits(model, split, batch_size, f"evaluating on {split.name}"), split.labels)
