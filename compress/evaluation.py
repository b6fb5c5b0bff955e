"""Artifacts measured on the runtime that runs them: logits of any runtime's predictor over a split, parity of an
ONNX export against the PyTorch model, and an ONNX file's artifact with its test accuracy."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from compress.artifacts import Artifact
from compress.config import Strict
from compress.data.dataset import DataBundle, Split
from compress.errors import ExportError
from compress.models.decoder import cache_shape
from compress.models.task_model import TaskModel
from compress.runtimes.base import Predictor, get_runtime
from compress.runtimes.decoding import decoder_runner
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


def split_accuracy(predictor: Predictor, split: Split, batch_size: int, label: str) -> tuple[float, np.ndarray]:
    """Top-1 accuracy of any runtime's predictor over a labelled split, and its logits."""
    logits = onnx_logits(predictor, split, batch_size, label)
    return float((logits.argmax(-1) == split.labels.numpy()).mean()), logits


def check_parity(
    model: TaskModel, path: Path, split: Split, cfg: ParityConfig, name: str, *, batch_size: int = 32
) -> dict[str, float]:
    """ONNX against PyTorch on the first test examples, ``batch_size`` at a time (1 for graphs whose numbers
    depend on the batch: onnxruntime's dynamic int8 takes one activation range over the whole batch)."""
    sub = split.subset(cfg.samples)
    pred = predictor("onnxruntime", path)
    ort_out = onnx_logits(pred, sub, batch_size, f"parity {name}")
    model.module.eval()
    with torch.no_grad():
        torch_out = torch.cat([model.logits(b) for b in sub.loader(batch_size)]).numpy()
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
    acc, logits = split_accuracy(predictor("onnxruntime", path), data.test, eval_batch_size, f"accuracy {name}")
    metrics = {"accuracy": acc, **extra}
    if fp32_logits is not None:
        metrics["top1_agreement_with_fp32"] = float((logits.argmax(-1) == fp32_logits.argmax(-1)).mean())
    art = Artifact(name, "onnx", path, stage, parent=parent, precision=precision, params=params, metrics=metrics)
    log.info("%s: accuracy %.4f (onnxruntime, test split)", name, metrics["accuracy"])
    return art.finalize(), logits


# ---- causal LMs: a KV-cache graph measured on its runtime -------------------------------------------------------
class GenerationCheck(Strict):
    """What `export` checks and shows of a causal LM's graph: decode-step parity and greedy completions."""

    parity_steps: int = Field(8, gt=0, le=256, description="Greedy decode steps compared with PyTorch (parity).")
    prompts: list[str] = Field(
        default_factory=lambda: ["def ", "import ", "class "],
        min_length=1,
        description="Prompts whose greedy completions the report prints (what the deployed model writes).",
    )
    new_tokens: int = Field(32, gt=0, le=1024, description="Tokens generated per prompt.")


def decoder_parity(
    model: TaskModel, path: Path, split: Split, cfg: ParityConfig, steps: int, name: str,
    runtime: str = "onnxruntime",
) -> dict[str, float]:  # fmt: skip
    """The graph (or program) against PyTorch over a prompt (the start of the first test blocks) and ``steps``
    greedy decode steps through the KV cache: max abs logit difference and top-1 agreement of every step."""
    runner = decoder_runner(runtime, path, cache_shape(model.module))
    diffs, agree = [], []
    model.module.eval()
    for block in split.features[: max(1, min(4, cfg.samples))]:
        prompt = list(block[: max(1, min(32, len(block) - 1))])
        tokens, logits = runner.greedy(prompt, steps)
        seq = prompt + tokens
        with torch.no_grad():
            ref = model.module(input_ids=torch.tensor([seq])).logits[0].float().numpy()  # type: ignore[operator]
        want = ref[len(prompt) - 1 :]  # the logits that chose each generated token, and the last one
        got = np.stack(logits)
        diffs.append(float(np.abs(got - want).max()))
        agree.append(float((got.argmax(-1) == want.argmax(-1)).mean()))
    diff, top1 = max(diffs), float(np.mean(agree))
    if diff > cfg.max_abs_diff or top1 < cfg.min_top1_agreement:
        raise ExportError(
            f"{'ExecuTorch' if runtime == 'executorch' else 'ONNX'} export of {name!r} does not match PyTorch over a "
            f"prompt and {steps} cached decode steps: max abs "
            f"diff {diff:.2e} (allowed {cfg.max_abs_diff:.0e}), top-1 agreement {top1:.3f} (needed "
            f"{cfg.min_top1_agreement}). Raise export.parity thresholds only if you accept the difference."
        )
    return {"parity_max_abs_diff": diff, "parity_top1_agreement": top1, "parity_decode_steps": float(steps)}


@torch.no_grad()
def teacher_picks(teacher: TaskModel, split: Split, batch_size: int) -> np.ndarray:
    """The teacher's (PyTorch) argmax token at every predicted position of ``split``, in order: computed once,
    compared with every deployed graph."""
    teacher.module.eval()
    out = []
    loader = split.loader(split.logits_batch(batch_size, teacher.num_labels))
    with progress(f"teacher tokens on {split.name}", len(loader)) as bar:
        for batch in loader:
            logits = teacher.logits(batch)
            out.append(logits[batch["labels"] != -100].argmax(-1).numpy())
            bar.advance()
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def decoder_metrics(
    runtime: str, path: Path, module: torch.nn.Module, split: Split, batch_size: int, label: str,
    teacher: np.ndarray | None = None,
) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Perplexity, next-token accuracy and (with the teacher's `teacher_picks`) top-1 agreement with the teacher,
    of the graph on ``runtime`` over every predicted token of ``split`` (prefill with an empty cache). Also the
    argmax token of every counted position, to compare artifacts with each other."""
    runner = decoder_runner(runtime, path, cache_shape(module))
    nll, correct, count = 0.0, 0, 0
    picks = []
    loader = split.loader(split.logits_batch(batch_size, int(getattr(module.config, "vocab_size", 0) or 1)))
    with progress(label, len(loader)) as bar:
        for batch in loader:
            ids, mask, labels = (batch[k].numpy() for k in ("input_ids", "attention_mask", "labels"))
            logits, _ = runner.forward(ids, mask, runner.empty(ids.shape[0]))
            keep = labels != -100
            z = torch.from_numpy(logits[keep]).float()
            y = torch.from_numpy(labels[keep])
            nll += float(torch.nn.functional.cross_entropy(z, y, reduction="sum"))
            top = z.argmax(-1)
            correct += int((top == y).sum())
            picks.append(top.numpy())
            count += int(keep.sum())
            bar.advance()
    n = max(count, 1)
    metrics = {"perplexity": math.exp(min(nll / n, 50.0)), "nll": nll / n, "next_token_accuracy": correct / n,
               "tokens": float(count)}  # fmt: skip
    mine = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    if teacher is not None:
        metrics["top1_agreement_with_teacher"] = float((mine == teacher).mean()) if len(mine) else 1.0
    return metrics, mine


def completions(runner: Any, tokenizer: Any, cfg: GenerationCheck) -> list[dict[str, str]]:
    """Greedy completions of the fixed prompts by the graph (what a person reads to judge the model)."""
    out = []
    for prompt in cfg.prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        tokens, _ = runner.greedy(list(ids), cfg.new_tokens)
        out.append({"prompt": prompt, "completion": tokenizer.decode(tokens)})
    return out
