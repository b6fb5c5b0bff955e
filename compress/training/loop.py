"""The one training loop every training stage uses: AdamW, linear warm-up and decay, dev-selected best."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compress.config import TrainSchedule
from compress.data.dataset import Batch, Split
from compress.errors import StageError
from compress.models.bnb import is_bnb
from compress.models.task_model import TaskModel
from compress.training.evaluate import evaluate
from compress.ui import progress

log = logging.getLogger("compress")
StepLoss = Callable[[Batch], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainResult:
    steps: int
    best_dev_accuracy: float
    best_step: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    first_loss: float = math.nan
    last_loss: float = math.nan


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


def train(
    model: TaskModel,
    step_loss: StepLoss,
    train_split: Split,
    dev_split: Split,
    schedule: TrainSchedule,
    *,
    seed: int,
    extra: nn.Module | None = None,
    label: str = "training",
    extra_optimizers: tuple[torch.optim.Optimizer, ...] = (),
    select_best: bool = True,
) -> TrainResult:
    """Train ``model`` (and ``extra``, e.g. loss regressors) on ``step_loss``; keep the best dev checkpoint.

    ``extra_optimizers`` step with the main one on the same loss (e.g. pruning masks at their own learning rate,
    Lagrange multipliers by gradient ascent); ``select_best=False`` keeps the last state (a pruning run must
    end where its size target is met, not at its best early checkpoint)."""
    if is_bnb(model.module):
        raise StageError(
            f"{label}: the model is loaded with bitsandbytes (frozen int8/nf4 weights) and cannot be trained; "
            "use it as a distillation teacher only (fine-tune it before loading it with `bitsandbytes`)."
        )
    torch.manual_seed(seed)
    steps = total_steps(schedule, len(train_split))
    per_epoch = math.ceil(len(train_split) / schedule.batch_size)
    eval_every = schedule.eval_every or per_epoch
    modules = [model.module] + ([extra] if extra is not None else [])
    opt = torch.optim.AdamW(_param_groups(modules, schedule.weight_decay), lr=schedule.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(schedule.warmup_steps, steps))
    result = TrainResult(steps, -1.0, 0, 0.0)
    best_state = None
    start, step, epoch, running = time.perf_counter(), 0, 0, 0.0
    log.info("%s: %d steps (%d per epoch), batch %d, lr %g", label, steps, per_epoch, schedule.batch_size, schedule.lr)
    with progress(label, steps) as bar:
        while step < steps:
            for batch in train_split.loader(schedule.batch_size, shuffle=True, seed=seed + epoch):
                for m in modules:
                    m.train()
                loss, parts = step_loss(batch)
                for o in (opt, *extra_optimizers):
                    o.zero_grad(set_to_none=True)
                loss.backward()
                if schedule.max_grad_norm:
                    nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], schedule.max_grad_norm)
                for o in (opt, *extra_optimizers):
                    o.step()
                sched.step()
                step += 1
                value = float(loss.detach())
                result.first_loss = value if step == 1 else result.first_loss
                running = value if step == 1 else 0.98 * running + 0.02 * value
                bar.advance(info=f"loss {running:.4f}")
                if step % eval_every == 0 or step == steps:
                    dev_acc = evaluate(model, dev_split, schedule.eval_batch_size)
                    result.history.append({"step": step, "loss": running, "dev_accuracy": dev_acc, **parts})
                    log.info("%s step %d/%d: loss %.4f, dev accuracy %.4f", label, step, steps, running, dev_acc)
                    if dev_acc > result.best_dev_accuracy or not select_best:
                        result.best_dev_accuracy, result.best_step = dev_acc, step
                        best_state = copy.deepcopy(model.module.state_dict())
                if step >= steps:
                    break
            epoch += 1
    result.last_loss = running
    if best_state is not None:
        model.module.load_state_dict(best_state)
    model.module.eval()
    result.seconds = time.perf_counter() - start
    log.info(
        "%s done in %.1fs; best dev accuracy %.4f at step %d",
        label,
        result.seconds,
        result.best_dev_accuracy,
        result.best_step,
    )
    return result
