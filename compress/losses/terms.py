"""Loss terms a recipe names: a config (registered by `name`) and a module computing it on captured outputs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from compress.config import Strict
from compress.errors import StageError
from compress.losses import functional as F
from compress.losses.taps import FeatureTaps, check_paths
from compress.models.layer_map import evenly_spaced
from compress.models.task_model import TaskModel
from compress.registry import Registry


class LossConfig(Strict):
    name: str
    weight: float = Field(1.0, ge=0, description="Weight of this term in the total loss.")


@dataclass
class Captured:
    """What one forward pass exposed: logits and tapped module outputs by path."""

    logits: torch.Tensor | None
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class LossTerm(nn.Module):
    """A weighted loss; may own trainable parameters (e.g. FitNets regressors) trained with the student."""

    uses_teacher_logits = True
    uses_labels = False

    def __init__(self, weight: float, student_paths: list[str] | None = None, teacher_paths: list[str] | None = None):
        super().__init__()
        self.weight = weight
        self.student_paths = student_paths or []
        self.teacher_paths = teacher_paths or []

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} must define forward(student, teacher, batch)")


@dataclass
class LossDef:
    config: type[LossConfig]
    build: Callable[[LossConfig, TaskModel, TaskModel, dict[str, torch.Tensor]], LossTerm]


LOSSES: Registry[LossDef] = Registry("loss")


# ---- logit KD ------------------------------------------------------------------------------------------
class KDConfig(LossConfig):
    """Hinton logit distillation: T^2 * KL(softmax(t/T) || softmax(s/T))."""

    name: Literal["kd"]
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T.")


class KDTerm(LossTerm):
    def __init__(self, cfg: KDConfig):
        super().__init__(cfg.weight)
        self.temperature = cfg.temperature

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert s.logits is not None and t.logits is not None
        if s.logits.dim() == 3:  # next-token logits: token-level, over non-padding positions
            return F.forward_kl(s.logits, t.logits, mask=batch.get("attention_mask"), temperature=self.temperature)
        return F.kd_loss(s.logits, t.logits, temperature=self.temperature)


# ---- cross-entropy ---------------------------------------------------------------------------------------
class CEConfig(LossConfig):
    """Cross-entropy with the labels (mix it with `kd` by weights)."""

    name: Literal["ce"]
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing.")


class CETerm(LossTerm):
    uses_teacher_logits = False
    uses_labels = True

    def __init__(self, cfg: CEConfig):
        super().__init__(cfg.weight)
        self.label_smoothing = cfg.label_smoothing

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert s.logits is not None
        return F.ce_loss(s.logits, batch["labels"], label_smoothing=self.label_smoothing)


# ---- FitNets hints ---------------------------------------------------------------------------------------
class HiddenConfig(LossConfig):
    """FitNets hints: MSE between intermediate features, through a learned projection when widths differ."""

    name: Literal["hidden"]
    pairs: list[tuple[str, str]] | None = Field(
        None,
        description="[student module path, teacher module path] pairs. Default: every student layer/stage "
        "paired with the evenly spaced teacher layer/stage (BERT encoder layers, CNN stages).",
    )


def _probe(model: TaskModel, paths: list[str], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad(), FeatureTaps(model.module, paths) as feats:
        model.logits(batch)
    return dict(feats)


def _projector(s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    if s.dim() == 4:
        proj: nn.Module = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
        if s.shape[-2:] != t.shape[-2:]:
            proj = nn.Sequential(proj, nn.AdaptiveAvgPool2d(tuple(t.shape[-2:])))
        return proj
    return nn.Identity() if s.shape[-1] == t.shape[-1] else nn.Linear(s.shape[-1], t.shape[-1])


class PairedTerm(LossTerm):
    """A term over (student module, teacher module) feature pairs: checks the paths, taps them, and probes
    both models once on a real batch so that subclasses can size projections or refuse mismatched widths."""

    uses_teacher_logits = False
    pairs: list[tuple[str, str]]

    def _pair(
        self, weight: float, given: list[tuple[str, str]] | None, loss: str,
        student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor],
    ) -> tuple[list[tuple[str, str]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:  # fmt: skip
        pairs = given or _default_pairs(student, teacher, loss)
        check_paths(student.module, [p[0] for p in pairs], "the student")
        check_paths(teacher.module, [p[1] for p in pairs], "the teacher")
        super().__init__(weight, [p[0] for p in pairs], [p[1] for p in pairs])
        self.pairs = pairs
        return pairs, _probe(student, self.student_paths, batch), _probe(teacher, self.teacher_paths, batch)


class HiddenTerm(PairedTerm):

    def __init__(self, cfg: HiddenConfig, student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor]):
        pairs, s_feats, t_feats = self._pair(cfg.weight, cfg.pairs, "hidden", student, teacher, batch)
        self.projectors = nn.ModuleList(_projector(s_feats[s], t_feats[t]) for s, t in pairs)

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch.get("attention_mask")
        total = torch.zeros(())
        for (sp, tp), proj in zip(self.pairs, self.projectors, strict=True):
            fs, ft = proj(s.features[sp]), t.features[tp]
            total = total + F.hint_loss(fs, ft, mask=mask if fs.dim() == 3 else None)
        return total / len(self.pairs)


# ---- DPHuBERT layer-to-layer ----------------------------------------------------------------------------------
class L1CosineConfig(LossConfig):
    """DPHuBERT's layer-to-layer distillation: per layer pair, ``mean |W h_s - h_t| + (1 - cos(W h_s, h_t))`` per
    token, averaged over non-padding tokens and pairs. ``W`` is the identity where the hidden sizes match (a pruned
    copy of the teacher, DPHuBERT's setting) and a learned linear map where they differ (a searched or narrower
    student): DistilHuBERT's prediction heads (Chang et al., 2022), which DPHuBERT's loss comes from."""

    name: Literal["l1_cosine"]
    pairs: list[tuple[str, str]] | None = Field(
        None,
        description="[student module path, teacher module path] pairs. Default: every student layer paired with "
        "the evenly spaced teacher layer (the family's feature taps).",
    )


def _default_pairs(student: TaskModel, teacher: TaskModel, loss: str) -> list[tuple[str, str]]:
    s_mods, t_mods = student.features, teacher.features
    if not s_mods or not t_mods:
        raise StageError(f"loss `{loss}` has no default layers for this model; give `pairs` explicitly.")
    return [(s, t_mods[j]) for s, j in zip(s_mods, evenly_spaced(len(s_mods), len(t_mods)), strict=True)]


class L1CosineTerm(PairedTerm):

    def __init__(self, cfg: L1CosineConfig, student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor]):
        pairs, s_feats, t_feats = self._pair(cfg.weight, cfg.pairs, "l1_cosine", student, teacher, batch)
        for s, t in pairs:
            if s_feats[s].dim() != 3 or t_feats[t].dim() != 3:
                raise StageError(f"loss `l1_cosine`: {s} and {t} must be token sequences (batch, tokens, width); "
                                 "use `hidden` for feature maps.")  # fmt: skip
        self.projectors = nn.ModuleList(_projector(s_feats[s], t_feats[t]) for s, t in pairs)

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.l1_cosine_loss(
            [proj(s.features[p]) for (p, _), proj in zip(self.pairs, self.projectors, strict=True)],
            [t.features[q] for _, q in self.pairs], mask=batch.get("attention_mask"),
        )  # fmt: skip


# ---- MiniLM self-attention relations ---------------------------------------------------------------------------
class MiniLMConfig(LossConfig):
    """MiniLMv2 Q-Q, K-K, V-V self-attention relation distillation between two layers."""

    name: Literal["minilm"]
    student_layer: int = Field(-1, description="Student layer index (negative counts from the end).")
    teacher_layer: int = Field(-1, description="Teacher layer index (negative counts from the end).")
    relation_heads: int | None = Field(
        None, gt=0, description="Relation heads (default: the teacher's attention heads); must divide both widths."
    )


def qkv_paths(model: TaskModel, layer: int, role: str) -> list[str]:
    names = [n for n, _ in model.module.named_modules()]
    layers = sorted({int(m.group(1)) for n in names if (m := re.search(r"\.layer\.(\d+)\.attention\.self\.query$", n))})
    if not layers:
        raise StageError(
            f"loss `minilm`: the {role} has no BERT-style `...layer.N.attention.self.query/key/value` modules."
        )
    idx = layers[layer]
    prefix = next(n for n in names if n.endswith(f".layer.{idx}.attention.self.query"))[: -len("query")]
    return [prefix + p for p in ("query", "key", "value")]


class MiniLMTerm(LossTerm):
    uses_teacher_logits = False

    def __init__(self, cfg: MiniLMConfig, student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor]):
        super().__init__(
            cfg.weight,
            qkv_paths(student, cfg.student_layer, "student"),
            qkv_paths(teacher, cfg.teacher_layer, "teacher"),
        )
        heads = cfg.relation_heads or int(getattr(getattr(teacher.module, "config", None), "num_attention_heads", 1))
        s_width = _probe(student, self.student_paths[:1], batch)[self.student_paths[0]].shape[-1]
        t_width = _probe(teacher, self.teacher_paths[:1], batch)[self.teacher_paths[0]].shape[-1]
        if s_width % heads or t_width % heads:
            raise StageError(
                f"loss `minilm`: relation_heads={heads} must divide the student width {s_width} and the teacher "
                f"width {t_width}; set `relation_heads`."
            )
        self.heads = heads

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.minilm_relation_loss(
            [s.features[p] for p in self.student_paths],
            [t.features[p] for p in self.teacher_paths],
            relation_heads=self.heads,
            mask=batch.get("attention_mask"),
        )


LOSSES.add("kd", LossDef(KDConfig, lambda c, s, t, b: KDTerm(c)))  # type: ignore[arg-type]
LOSSES.add("ce", LossDef(CEConfig, lambda c, s, t, b: CETerm(c)))  # type: ignore[arg-type]
LOSSES.add("hidden", LossDef(HiddenConfig, HiddenTerm))  # type: ignore[arg-type]
LOSSES.add("minilm", LossDef(MiniLMConfig, MiniLMTerm))  # type: ignore[arg-type]
LOSSES.add("l1_cosine", LossDef(L1CosineConfig, L1CosineTerm))  # type: ignore[arg-type]


def default_losses() -> list[LossConfig]:
    """What `distill` trains with when the recipe names no losses: logit KD at temperature 2 plus half CE."""
    return [KDConfig(name="kd", weight=1.0, temperature=2.0), CEConfig(name="ce", weight=0.5)]


def build_terms(
    configs: list[LossConfig], student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor]
) -> list[LossTerm]:
    return [LOSSES.get(c.name).build(c, student, teacher, batch) for c in configs]
