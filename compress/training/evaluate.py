"""Inference helpers shared by every stage: logits over a split (sharded across processes), the task metric
(accuracy for classification, perplexity for causal LMs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
    if split.task != "classification":
        raise TypeError(f"predict_logits takes classification splits, not {split.task}")
    part = split
    if engine is not None and engine.distributed:
        part = split.slice(*engine.shard(len(split)))
    # shortest first: batches of similar lengths pad little (a batch is padded to its longest example); on SST-2's
    # train split random batches of 128 carry 3x the tokens of their sentences. The order is undone below.
    lengths = part.lengths()
    order = sorted(range(len(part)), key=lengths.__getitem__) if lengths else None
    out = []
    loader = (part.take(order) if order is not None else part).loader(batch_size)
    with progress(label or f"inference on {split.name}", len(loader)) as bar:
        for batch in loader:
            if engine is not None:
                batch = engine.to_device(batch)
            out.append(model.logits(batch).float().cpu())
            bar.advance()
    logits = torch.cat(out) if out else torch.zeros((0, model.num_labels))
    if order is not None:
        logits = logits[torch.argsort(torch.tensor(order, dtype=torch.long))]
    return engine.gather(logits) if engine is not None else logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


# the metric that selects checkpoints, per task: (name, higher is better)
SELECTION = {"classification": ("accuracy", True), "causal_lm": ("perplexity", False)}


def selection_metric(split: Split) -> tuple[str, bool]:
    """The metric a split selects checkpoints by, and whether higher is better."""
    return SELECTION[split.task]


@torch.no_grad()
def lm_metrics(model: TaskModel, split: Split, batch_size: int, engine: Engine | None = None) -> dict[str, float]:
    """Perplexity ``exp(mean NLL)`` over every predicted token of the split, next-token top-1 accuracy and the
    token count; sharded across processes and summed (equal to one process's)."""
    model.module.eval()
    part = split.slice(*engine.shard(len(split))) if engine is not None and engine.distributed else split
    nll, correct, count = torch.zeros((), dtype=torch.float64), torch.zeros(()), torch.zeros(())
    loader = part.loader(part.logits_batch(batch_size, model.num_labels))
    with progress(f"perplexity on {split.name}", len(loader)) as bar:
        for batch in loader:
            if engine is not None:
                batch = engine.to_device(batch)
            logits = model.logits(batch).float()
            labels = batch["labels"]
            keep = labels != -100  # ignored by cross_entropy too: no copy of the logits' kept rows
            nll += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum").double().cpu()
            correct += ((logits.argmax(-1) == labels) & keep).sum().float().cpu()
            count += keep.sum().float().cpu()
            bar.advance()
    if engine is not None and engine.distributed:
        nll, correct, count = engine.sum(nll).double(), engine.sum(correct), engine.sum(count)
    n = max(float(count), 1.0)
    mean = float(nll) / n
    return {"perplexity": math.exp(min(mean, 50.0)), "nll": mean, "next_token_accuracy": float(correct) / n,
            "tokens": float(count)}  # fmt: skip


def metrics(model: TaskModel, split: Split, batch_size: int, engine: Engine | None = None) -> dict[str, float]:
    """The task's metrics on a split: ``accuracy`` (classification); ``perplexity``, ``nll``,
    ``next_token_accuracy`` and ``tokens`` (causal LMs)."""
    if split.task == "causal_lm":
        return lm_metrics(model, split, batch_size, engine)
    logits = predict_logits(model, split, batch_size, f"evaluating on {split.name}", engine)
    return {"accuracy": accuracy(logits, split.labels)}


def evaluate(model: TaskModel, split: Split, batch_size: int, engine: Engine | None = None) -> float:
    """The split's selection metric (accuracy, or perplexity for causal LMs; see `selection_metric`)."""
    return metrics(model, split, batch_size, engine)[selection_metric(split)[0]]


def score(model: TaskModel, split: Split) -> float:
    """Higher is better: accuracy (a drop in points), or -ln(perplexity) for causal LMs (a drop of 0.01 is 1% more
    perplexity): what a search over a model's settings compares."""
    if split.task == "causal_lm":
        return -lm_metrics(model, split, 32)["nll"]
    return accuracy(predict_logits(model, split, 128, f"scoring on {split.name}"), split.labels)


def describe_score(split: Split, value: float) -> str:
    """A `score` in the split's own metric."""
    return f"perplexity {math.exp(-value):.3f}" if split.task == "causal_lm" else f"accuracy {value:.4f}"
