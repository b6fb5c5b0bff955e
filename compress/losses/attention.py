"""Attention-map and attention-output distillation terms (quantization-aware distillation of encoders).

Both tap every real self-attention block (``...layer.N.attention.self``; pruned-away blocks are skipped) of the
student and of the teacher: element 0 of its output is the context (attention output), element 1 the attention
probabilities, which Hugging Face attention returns only when it runs "eager" (not SDPA), so both models are
switched to eager attention.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import Field

from compress.errors import StageError
from compress.losses import functional as F
from compress.losses.terms import LOSSES, Captured, LossConfig, LossDef, LossTerm, _probe
from compress.models.bert import default_layer_map, use_eager_attention
from compress.models.task_model import TaskModel


class AttentionLossConfig(LossConfig):
    """Shared by the attention losses: which layers."""

    layers: list[int] | None = Field(
        None,
        description="Student attention layers to distil (indices among the layers that have attention; negative "
        "counts from the end). Default: all, each paired with the teacher layer at the same depth.",
    )


class AttentionMapConfig(AttentionLossConfig):
    """KL(teacher || student) of the attention probabilities, per head and layer (needs equal head counts)."""

    name: Literal["attention_map"]


class AttentionOutputConfig(AttentionLossConfig):
    """MSE between the teacher's and the student's self-attention outputs (context vectors), per layer."""

    name: Literal["attention_output"]


def attention_blocks(model: TaskModel, role: str, loss: str) -> list[str]:
    """Module paths of the self-attention blocks that still have heads, in layer order."""
    names = {n for n, _ in model.module.named_modules()}
    blocks = sorted(
        (n for n in names if re.search(r"\.layer\.\d+\.attention\.self$", n) and f"{n}.query" in names),
        key=lambda n: int(re.findall(r"\.layer\.(\d+)\.", n)[-1]),
    )
    if not blocks:
        raise StageError(
            f"loss `{loss}`: the {role} ({type(model.module).__name__}) has no BERT-style "
            "`...layer.N.attention.self` block with query/key/value to tap."
        )
    use_eager_attention(model.module)
    return blocks


class AttentionTerm(LossTerm):
    uses_teacher_logits = False
    element = 0  # which output of the attention block: 0 context, 1 probabilities

    def __init__(
        self, cfg: AttentionLossConfig, student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor]
    ):
        s_blocks = attention_blocks(student, "student", cfg.name)
        t_blocks = attention_blocks(teacher, "teacher", cfg.name)
        chosen = list(range(len(s_blocks)))
        if cfg.layers is not None:
            try:
                chosen = sorted({range(len(s_blocks))[i] for i in cfg.layers})
            except IndexError:
                raise StageError(
                    f"loss `{cfg.name}`: layers {cfg.layers} out of range; the student has {len(s_blocks)} "
                    "attention layers."
                ) from None
        mapping = default_layer_map(len(s_blocks), len(t_blocks))
        s_paths = [f"{s_blocks[i]}#{self.element}" for i in chosen]
        t_paths = [f"{t_blocks[mapping[i]]}#{self.element}" for i in chosen]
        super().__init__(cfg.weight, s_paths, t_paths)
        s_feats, t_feats = _probe(student, s_paths, batch), _probe(teacher, t_paths, batch)
        for sp, tp in zip(s_paths, t_paths, strict=True):
            if s_feats[sp].shape != t_feats[tp].shape:
                raise StageError(
                    f"loss `{cfg.name}`: student {sp.split('#')[0]} gives {tuple(s_feats[sp].shape)} but teacher "
                    f"{tp.split('#')[0]} gives {tuple(t_feats[tp].shape)}; this loss needs equal head counts and "
                    "widths (quantization-aware distillation of the same architecture)."
                )


class AttentionMapTerm(AttentionTerm):
    element = 1

    def __init__(self, cfg: AttentionMapConfig, student: TaskModel, teacher: TaskModel, batch: dict):
        super().__init__(cfg, student, teacher, batch)
        for module in student.module.modules():  # a dropped probability would make the KL infinite
            drop = getattr(module, "dropout", None)
            if type(module).__name__.endswith("SelfAttention") and isinstance(drop, torch.nn.Dropout):
                drop.p = 0.0

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.attention_map_loss(
            [s.features[p] for p in self.student_paths],
            [t.features[p] for p in self.teacher_paths],
            mask=batch.get("attention_mask"),
        )


class AttentionOutputTerm(AttentionTerm):
    element = 0

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.attention_output_loss(
            [s.features[p] for p in self.student_paths],
            [t.features[p] for p in self.teacher_paths],
            mask=batch.get("attention_mask"),
        )


LOSSES.add("attention_map", LossDef(AttentionMapConfig, AttentionMapTerm))  # type: ignore[arg-type]
LOSSES.add("attention_output", LossDef(AttentionOutputConfig, AttentionOutputTerm))  # type: ignore[arg-type]
