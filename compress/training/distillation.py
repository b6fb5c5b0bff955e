"""One distillation step shared by the training stages: run both models with their feature taps, sum the terms."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from compress.data.dataset import Batch
from compress.losses.taps import FeatureTaps
from compress.losses.terms import Captured, LossTerm
from compress.models.task_model import TaskModel
from compress.training.engine import Engine
from compress.training.loop import StepLoss
from compress.training.teacher_cache import TopKCache


def _placed(model: TaskModel) -> bool:
    """A model that placed itself (bitsandbytes on a GPU) is not moved; its logits come back to the batch's device."""
    from compress.models.bnb import is_bnb

    return is_bnb(model.module)


def distillation_step(
    student: TaskModel,
    teacher: TaskModel,
    terms: list[LossTerm],
    names: list[str],
    cached_teacher_logits: torch.Tensor | TopKCache | None = None,
    engine: Engine | None = None,
    student_data: Callable[[Batch], Batch] | None = None,
) -> StepLoss:
    """The step loss ``sum_i w_i * term_i(student, teacher)``; parts reported under ``names``. With cached teacher
    logits (indexed by the batch's ``index``; a causal LM's as top-k log-probabilities, see `teacher_cache.py`)
    the teacher does not run. With an engine, the teacher runs on its device at its teacher precision (the
    student's autocast is the caller's). ``student_data`` may replace a batch by student-generated sequences
    (`student_data.py`); the teacher then scores them live, whatever the cache."""
    device = engine.device if engine is not None else torch.device("cpu")
    if engine is not None:
        if not _placed(teacher):
            teacher.module.to(engine.device)
        if isinstance(cached_teacher_logits, torch.Tensor):
            cached_teacher_logits = cached_teacher_logits.to(engine.device)
    teacher_autocast = (lambda: engine.autocast(engine.teacher_precision)) if engine is not None else nullcontext
    s_paths = sorted({p for t in terms for p in t.student_paths})
    t_paths = sorted({p for t in terms for p in t.teacher_paths})

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if student_data is not None:
            batch = student_data(batch)
        with FeatureTaps(student.module, s_paths) as s_feats:
            s = Captured(student.logits(batch), s_feats)
        if "generated" in batch:  # student-generated sequences: nothing cached for them
            with torch.no_grad(), teacher_autocast(), FeatureTaps(teacher.module, t_paths) as t_feats:
                t = Captured(teacher.logits(batch).float(), dict(t_feats))
        elif isinstance(cached_teacher_logits, TopKCache):
            t = Captured(cached_teacher_logits.dense(batch["index"].cpu(), batch["input_ids"].shape[1], device))
        elif cached_teacher_logits is not None:
            t = Captured(cached_teacher_logits[batch["index"].to(cached_teacher_logits.device)])
        else:
            with torch.no_grad(), teacher_autocast(), FeatureTaps(teacher.module, t_paths) as t_feats:
                t = Captured(teacher.logits(batch).float(), dict(t_feats))
        total = torch.zeros(())
        parts: dict[str, float] = {}
        for name, term in zip(names, terms, strict=True):
            value = term(s, t, batch)
            parts[name] = float(value.detach())
            total = total + term.weight * value
        return total, parts

    return step
