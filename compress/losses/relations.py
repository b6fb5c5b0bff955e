"""Classifier losses that compare the batch as a whole rather than example by example: SinKD (optimal transport
between the batch's student and teacher class distributions) and RKD (distance and angle relations between the
batch's embeddings). Both are registered by name like every other term."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compress.errors import StageError
from compress.losses import functional as F
from compress.losses.terms import LOSSES, Captured, LossConfig, LossDef, LossTerm, PairedTerm
from compress.models.task_model import TaskModel


class SinkhornConfig(LossConfig):
    """SinKD: the batch-wise Sinkhorn distance between the student's and the teacher's softened class
    distributions (cost: L1 between examples' distributions; plan: entropic optimal transport)."""

    name: Literal["sinkd"]
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of both distributions.")
    epsilon: float = Field(0.1, gt=0, description="Entropic regularisation of the transport plan.")
    iterations: int = Field(20, gt=0, le=1000, description="Sinkhorn normalisation rounds (rows, then columns).")


class SinkhornTerm(LossTerm):
    def __init__(self, cfg: SinkhornConfig) -> None:
        super().__init__(cfg.weight)
        self.cfg = cfg

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert s.logits is not None and t.logits is not None
        if s.logits.dim() != 2:
            raise StageError("loss `sinkd` compares one class distribution per example; for causal LMs use the "
                             "sequence losses (fkl, rkl, skl, srkl, jsd, taid).")  # fmt: skip
        c = self.cfg
        return F.sinkhorn_kd_loss(s.logits, t.logits, temperature=c.temperature, epsilon=c.epsilon,
                                  iterations=c.iterations)  # fmt: skip


class RkdConfig(LossConfig):
    """RKD: distance-wise and angle-wise relations between the batch's embeddings (one vector per example: the
    first token of a text model's layer output, the spatial mean of a feature map), matched under a Huber loss."""

    name: Literal["rkd"]
    distance_weight: float = Field(25.0, ge=0, description="Weight of the distance-wise term (the paper's 25).")
    angle_weight: float = Field(50.0, ge=0, description="Weight of the angle-wise term (the paper's 50).")
    pair: tuple[str, str] | None = Field(
        None,
        description="[student module path, teacher module path] of the embeddings. Default: the last feature "
        "module of each (the last encoder layer, the last CNN stage).",
    )


def _embedding(x: torch.Tensor) -> torch.Tensor:
    """One vector per example: token 0 of ``(B, S, H)`` (BERT's [CLS]), the spatial mean of ``(B, C, H, W)``."""
    if x.dim() == 3:
        return x[:, 0]
    if x.dim() == 4:
        return x.mean(dim=(2, 3))
    return x.flatten(1)


class RkdTerm(PairedTerm):
    def __init__(self, cfg: RkdConfig, student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor]):
        if cfg.pair is None and (not student.features or not teacher.features):
            raise StageError("loss `rkd` has no default embedding for this model; give `pair: [student module, "
                             "teacher module]`.")  # fmt: skip
        pair = cfg.pair or (student.features[-1], teacher.features[-1])
        self._pair(cfg.weight, [pair], "rkd", student, teacher, batch)
        self.cfg = cfg

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        (sp, tp), c = self.pairs[0], self.cfg
        return F.rkd_loss(_embedding(s.features[sp]), _embedding(t.features[tp]), distance_weight=c.distance_weight,
                          angle_weight=c.angle_weight)  # fmt: skip


LOSSES.add("sinkd", LossDef(SinkhornConfig, lambda c, s, t, b: SinkhornTerm(c)))  # type: ignore[arg-type]
LOSSES.add("rkd", LossDef(RkdConfig, RkdTerm))  # type: ignore[arg-type]
