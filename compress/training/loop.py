"""The one training loop every training stage uses: AdamW, linear warm-up and decay, dev-selected best."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.config import TrainSchedule
from compress.data.dataset import Batch, Split
from compress.errors import StageError
from compress.models.bnb import is_bnb
from compress.models.task_model import TaskModel
from compress.training import checkpoint
from compress.training.engine import Engine, Session
from compress.training.evaluate import evaluate, selection_metric
from compress.ui import progress

log = logging.getLogger("compress")
StepLoss = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainResult:
    steps: int
    best_dev: float  # the best value of the dev split's selection metric (`dev_metric`)
    best_step: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    first_loss: float = math.nan
    last_loss: float = math.nan
    dev_metric: str = "accuracy"  # accuracy (higher is better) or perplexity (lower is better)
    checkpoint_seconds: float = 0.0  # time spent writing training checkpoints (this run, not a resumed one's)
    checkpoints: int = 0


def total_steps(schedule: TrainSchedule, n_train: int) -> int:
    """`max_steps` alone sets the length (as many passes over the data as it takes); with `epochs` also given,
    the smaller of the two wins; `epochs` alone counts passes."""
    per_epoch = math.ceil(n_train / schedule.batch_size)
    steps = max(1, math.ceil(per_epoch * schedule.epochs))
    if not schedule.max_steps:
        return steps
    if "epochs" not in schedule.model_fields_set:
        return schedule.max_steps
    return min(steps, schedule.max_steps)


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Trainable(nn.Module):
    """Everything a step trains, as one module for DistributedDataParallel: the model, the loss terms' own
    parameters (hint regressors) and the parameters of the extra optimisers (pruning masks, Lagrange
    multipliers), so that every gradient is averaged across processes. Its forward is the step loss."""

    def __init__(self, modules: list[nn.Module], others: list[nn.Parameter], step_loss: StepLoss) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.others = nn.ParameterList(others)
        self._step_loss = step_loss

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self._step_loss(batch)


def _enable_gradient_checkpointing(module: nn.Module, label: str) -> None:
    enable = getattr(module, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(module, "supports_gradient_checkpointing", False):
        raise StageError(
            f"{label}: train.gradient_checkpointing is set, but this model ({type(module).__name__}) has no "
            "gradient checkpointing (Hugging Face models do); set it to false."
        )
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def epoch_batches(n: int, batch_size: int, seed: int, lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
    """One epoch's global batches: the permutation a shuffling DataLoader seeded with ``seed`` draws, in chunks
    (it draws its workers' base seed from the generator first), so that results match the DataLoader's.

    With ``lengths`` (`group_by_length`), each window of `LENGTH_WINDOW` batches of that permutation is sorted by
    length before it is cut into batches, and the batches are then shuffled (the scheme of Hugging Face's
    `group_by_length` sampler): batches of similar lengths, padded to little more than their examples."""
    gen = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=gen)
    perm = torch.randperm(n, generator=gen)
    if lengths is None:
        return list(torch.split(perm, batch_size))
    size = torch.as_tensor(lengths, dtype=torch.long)
    windows = torch.split(perm, batch_size * LENGTH_WINDOW)
    # stable descending sort: the longest batch of each window comes first, ties keep the permutation's order
    ordered = torch.cat([w[torch.sort(size[w], descending=True, stable=True).indices] for w in windows])
    batches = list(torch.split(ordered, batch_size))
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


LENGTH_WINDOW = 64  # batches sorted by length together under `group_by_length`


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over every parameter) where torch has the kernel for the parameters' device: on a
    CPU its step over MiniLM's 22.7M parameters takes 28 ms instead of 240 ms (1 thread), about a fifth of each
    fine-tuning step. The same update as the default implementation, up to float rounding."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fusable = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, fused=fusable or None, **kwargs)


def train(
    model: TaskModel,
    step_loss: StepLoss,
    train_split: Split,
    dev_split: Split,
    schedule: TrainSchedule,
    *,
    session: Session,
    extra: nn.Module | None = None,
    label: str = "training",
    extra_optimizers: tuple[torch.optim.Optimizer, ...] = (),
    select_best: bool = True,
    on_step: Callable[[int], None] | None = None,
    on_eval: Callable[[float], None] | None = None,
) -> TrainResult:
    """Train ``model`` (and ``extra``, e.g. loss regressors) on ``step_loss``; keep the best dev checkpoint.

    ``extra_optimizers`` step with the main one on the same loss (e.g. pruning masks at their own learning rate,
    Lagrange multipliers by gradient ascent); ``select_best=False`` keeps the last state (a pruning run must
    end where its size target is met, not at its best early checkpoint). ``on_step(n)`` is called once ``n``
    optimiser steps are done (and with the step a resumed run starts from); ``on_eval(value)`` after each dev
    evaluation with the dev metric.

    Under several processes each runs its share of every global batch (``schedule.batch_size``) through
    DistributedDataParallel; the loss of each micro-batch is weighted by its share of the global batch, so the
    averaged gradient is the global batch's whatever the number of processes or accumulation steps. With
    ``session.checkpoints``, a checkpoint is written every ``checkpoint_every`` steps and a re-run resumes from
    it; a finished phase is kept too, so a stage that trains twice resumes inside its second phase."""
    engine = session.engine
    if is_bnb(model.module):
        raise StageError(
            f"{label}: the model is loaded with bitsandbytes (frozen int8/nf4 weights) and cannot be trained; "
            "use it as a distillation teacher only (fine-tune it before loading it with `bitsandbytes`)."
        )
    engine.check_batch(schedule.batch_size, len(train_split), label)
    torch.manual_seed(session.seed)
    steps = total_steps(schedule, len(train_split))
    per_epoch = math.ceil(len(train_split) / schedule.batch_size)
    eval_every = schedule.eval_every or per_epoch
    modules = [model.module] + ([extra] if extra is not None else [])
    for m in modules:
        m.to(engine.device)
    others = [p for o in extra_optimizers for g in o.param_groups for p in g["params"]]
    for p in others:
        p.data = p.data.to(engine.device)
    if engine.gradient_checkpointing:
        _enable_gradient_checkpointing(model.module, label)
    opt = adamw(_param_groups(modules, schedule.weight_decay), lr=schedule.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(schedule.warmup_steps, steps))
    optimizers = (opt, *extra_optimizers)
    scaler = engine.scaler()
    trainable = _Trainable(modules, others, step_loss)
    runner = engine.wrap(trainable)
    metric, higher = selection_metric(dev_split)
    result = TrainResult(steps, -math.inf if higher else math.inf, 0, 0.0, dev_metric=metric)
    best_state: dict[str, torch.Tensor] | None = None
    start, step, epoch, offset, running = time.perf_counter(), 0, 0, 0, 0.0
    folder = checkpoint.folder_for(session.checkpoints, label) if session.checkpoints else None
    every = engine.checkpoint_every if folder is not None else None

    def snapshot(done: bool) -> dict:
        return {
            "label": label, "steps": steps, "step": step, "epoch": epoch, "offset": offset, "running": running,
            "done": done, "model": model.module.state_dict(), "extra": extra.state_dict() if extra else {},
            "others": [p.detach().cpu().clone() for p in others],
            "optimizers": [o.state_dict() for o in optimizers], "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "best": best_state or {},
            "result": {"best_dev": result.best_dev, "best_step": result.best_step,
                       "first_loss": result.first_loss, "history": result.history,
                       "seconds": result.seconds},
            "rng": checkpoint.rng_state(engine.device),
        }  # fmt: skip

    saved = checkpoint.load(folder / "checkpoint.pt") if folder is not None else None
    if saved is not None and (saved["label"], saved["steps"]) != (label, steps):
        log.warning("%s: the checkpoint in %s is of another run; training starts from step 0", label, folder)
        saved = None
    if saved is not None:
        model.module.load_state_dict(saved["model"])
        if extra is not None:
            extra.load_state_dict(saved["extra"])
        with torch.no_grad():  # the extra optimisers' own parameters: pruning masks, Lagrange multipliers
            for p, value in zip(others, saved["others"], strict=True):
                p.copy_(value)
        for o, state in zip(optimizers, saved["optimizers"], strict=True):
            o.load_state_dict(state)
        sched.load_state_dict(saved["scheduler"])
        if scaler is not None and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        step, epoch, offset, running = saved["step"], saved["epoch"], saved["offset"], saved["running"]
        best_state = saved["best"] or None
        r = saved["result"]
        result.best_dev, result.best_step = r["best_dev"], r["best_step"]
        result.first_loss = r["first_loss"]
        result.history, result.seconds, result.last_loss = list(r["history"]), r["seconds"], running
        checkpoint.set_rng_state(saved["rng"], engine.device)
        start -= result.seconds
        log.info("%s: resumed from step %d%s", label, step, " (finished)" if saved["done"] else "")
        if on_step is not None:
            on_step(step)
        if saved["done"]:
            return _finish(model, result, None, label, engine)

    log.info("%s: %d steps (%d per epoch), batch %d, lr %g", label, steps, per_epoch, schedule.batch_size, schedule.lr)
    lengths = train_split.lengths() if schedule.group_by_length else None  # once, not every epoch
    with progress(label, steps) as bar:
        bar.advance(step)
        while step < steps:
            batches = epoch_batches(len(train_split), schedule.batch_size, session.seed + epoch, lengths)
            for position in range(offset, len(batches)):
                global_batch = batches[position]
                micro = engine.my_micro_batches(global_batch)
                if not micro:  # the last, partial batch is too small to share: the next epoch begins
                    continue
                for m in modules:
                    m.train()
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                total = torch.zeros(())
                parts: dict[str, float] = {}
                for j, idx in enumerate(micro):
                    batch = engine.to_device(train_split.collate(idx.tolist()))
                    share = len(idx) / len(global_batch)
                    with engine.no_sync(runner, skip=j < len(micro) - 1):
                        with engine.autocast():
                            loss, parts = runner(batch)
                        scaled = loss * (share * engine.world) if (share * engine.world) != 1.0 else loss
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    total = total + loss.detach().float().cpu() * share
                if scaler is not None:
                    for o in optimizers:
                        scaler.unscale_(o)
                if schedule.max_grad_norm:
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], schedule.max_grad_norm)
                for o in optimizers:
                    if scaler is not None:
                        scaler.step(o)
                    else:
                        o.step()
                if scaler is not None:
                    scaler.update()
                sched.step()
                step, offset = step + 1, position + 1
                if on_step is not None:
                    on_step(step)
                value = float(engine.sum(total))
                result.first_loss = value if step == 1 else result.first_loss
                running = value if step == 1 else 0.98 * running + 0.02 * value
                bar.advance(info=f"loss {running:.4f}")
                if step % eval_every == 0 or step == steps:
                    with engine.autocast():
                        dev = evaluate(model, dev_split, schedule.eval_batch_size, engine)
                    result.history.append({"step": step, "loss": running, f"dev_{metric}": dev, **parts})
                    log.info("%s step %d/%d: loss %.4f, dev %s %.4f", label, step, steps, running, metric, dev)
                    if on_eval is not None:
                        on_eval(dev)
                    better = dev > result.best_dev if higher else dev < result.best_dev
                    if better or not select_best:
                        result.best_dev, result.best_step = dev, step
                        best_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
                if every and step % every == 0 and step < steps and engine.is_main:
                    result.seconds = time.perf_counter() - start
                    _timed_save(result, folder / "checkpoint.pt", snapshot(done=False))  # type: ignore[operator]
                if step >= steps:
                    break
            else:
                epoch, offset = epoch + 1, 0
                continue
            break
    result.last_loss = running
    result.seconds = time.perf_counter() - start
    if best_state is not None:
        model.module.load_state_dict(best_state)
    if every and engine.is_main:  # the finished phase: a re-run of the stage skips it
        best_state = None
        _timed_save(result, folder / "checkpoint.pt", snapshot(done=True))  # type: ignore[operator]
    return _finish(model, result, extra, label, engine)


def _timed_save(result: TrainResult, path: Path, state: dict) -> None:
    """Write a checkpoint, counting the time it takes (the benchmark's checkpoint overhead)."""
    started = time.perf_counter()
    checkpoint.save(path, state)
    result.checkpoint_seconds += time.perf_counter() - started
    result.checkpoints += 1


def _finish(model: TaskModel, result: TrainResult, extra: nn.Module | None, label: str, engine: Engine) -> TrainResult:
    model.module.eval()
    if engine.device.type != "cpu":  # saving, exporting and measuring start from the CPU
        model.module.to("cpu")
        if extra is not None:
            extra.to("cpu")
    log.info("%s done in %.1fs; best dev %s %.4f at step %d", label, result.seconds, result.dev_metric,
             result.best_dev, result.best_step)  # fmt: skip
    return result
