"""Token-level distillation losses for causal language models, registered by name: forward KL, reverse KL
(MiniLLM), skew KL and skew reverse KL (DistiLLM), TAID, and the generalized Jensen-Shannon divergence (GKD).

Every function takes student and teacher logits ``(batch, positions, vocabulary)`` and a ``(batch, positions)``
mask of the positions that count (non-padding tokens), and returns the mean over those positions of a divergence
summed over the vocabulary. ``p`` is the teacher's next-token distribution, ``q`` the student's.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from compress.losses.functional import forward_kl
from compress.losses.functional import kl_per_position as _kl
from compress.losses.functional import token_mean as _token_mean
from compress.losses.terms import LOSSES, Captured, LossConfig, LossDef, LossTerm


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight * a + (1 - weight) * b)`` from log-probabilities, stably."""
    if weight >= 1.0:
        return log_a
    if weight <= 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight), log_b + math.log1p(-weight))


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Reverse KL (Gu et al., 2024, "MiniLLM: Knowledge Distillation of Large Language Models"; mode-seeking), in
    its token-level form: ``mean_tokens sum_v q(v) (log q(v) - log p(v))``. MiniLLM optimises the sequence-level
    form by policy gradient on student samples; the token-level form is its practical baseline."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return _token_mean(_kl(log_q, log_p), mask)


def skew_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Skew KL (Ko et al., 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models"):

    ``mean_tokens KL(p || alpha p + (1 - alpha) q)``. The mixture keeps the divergence finite and its gradient
    bounded where the student gives a token no mass; ``alpha = 0`` is forward KL."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return _token_mean(_kl(log_p, _log_mix(log_p, log_q, alpha)), mask)


def skew_reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Skew reverse KL (DistiLLM, Ko et al., 2024): ``mean_tokens KL(q || alpha q + (1 - alpha) p)``; ``alpha =
    0`` is reverse KL."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return _token_mean(_kl(log_q, _log_mix(log_q, log_p, alpha)), mask)


def taid_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, t: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """TAID (Shing et al., 2025, "TAID: Temporally Adaptive Interpolated Distillation for Efficient Knowledge
    Transfer in Language Models"): the target interpolates, in logit space, from the detached student towards the
    teacher,

    ``p_t = softmax((1 - t) * stopgrad(z_q) + t * z_p)``, loss ``mean_tokens KL(p_t || q)``;

    ``t = 1`` is forward KL. The schedule of ``t`` is `TaidSchedule`'s."""
    z_q = student_logits.float()
    log_pt = F.log_softmax((1.0 - t) * z_q.detach() + t * teacher_logits.float(), dim=-1)
    return _token_mean(_kl(log_pt, F.log_softmax(z_q, dim=-1)), mask)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Generalized Jensen-Shannon divergence (Agarwal et al., 2024, "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes", GKD):

    ``JSD_beta(p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m)`` with ``m = beta * p + (1 - beta) * q``,
    averaged over tokens. Divided by beta it tends to forward KL as beta -> 0; divided by (1 - beta), to reverse KL
    as beta -> 1; ``beta = 0.5`` is the symmetric JSD. ``beta`` must lie strictly between 0 and 1."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    log_m = _log_mix(log_p, log_q, beta)
    return _token_mean(beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m), mask)


class TaidSchedule:
    """TAID's adaptive, monotone schedule of the interpolation ``t`` (the paper's Algorithm 1). After each
    optimiser step ``n`` of ``N`` with loss ``J_n``:

    ``delta = (J_{n-1} - J_n) / (J_{n-1} + eps)``, ``m = beta * m + (1 - beta) * delta``,
    ``t = min(t_end, max(t_start + (t_end - t_start) * n / N, t + alpha * sigmoid(m) * (1 - t)))``.

    ``t`` never decreases, rises at least linearly, and faster while the loss is still falling. The state lives in
    tensors (``t``, ``momentum``, ``previous``, ``step``) so that checkpoints carry it."""

    def __init__(self, t_start: float, t_end: float, alpha: float, beta: float) -> None:
        self.t_start, self.t_end, self.alpha, self.beta = t_start, t_end, alpha, beta

    def update(self, state: dict[str, torch.Tensor], loss: float, step: int, total: int) -> None:
        t, m, previous = float(state["t"]), float(state["momentum"]), float(state["previous"])
        if not math.isfinite(loss):
            return
        if math.isfinite(previous):
            delta = (previous - loss) / (previous + 1e-15)
            m = self.beta * m + (1.0 - self.beta) * delta
        linear = self.t_start + (self.t_end - self.t_start) * min(1.0, step / max(1, total))
        step_up = self.alpha / (1.0 + math.exp(-m)) * (1.0 - t)
        state["t"].fill_(min(self.t_end, max(linear, t + step_up)))
        state["momentum"].fill_(m)
        state["previous"].fill_(loss)
        state["step"].fill_(step)


# ---- registered terms -------------------------------------------------------------------------------------------
def _mask(batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    return batch.get("attention_mask")


def _logits(s: Captured, t: Captured) -> tuple[torch.Tensor, torch.Tensor]:
    assert s.logits is not None and t.logits is not None
    if s.logits.dim() != 3:
        raise TypeError("sequence losses take next-token logits (batch, positions, vocabulary): use kd for "
                        "classifiers")  # fmt: skip
    return s.logits, t.logits


class ForwardKLConfig(LossConfig):
    """Token-level forward KL ``T^2 KL(p_T || q_T)`` over non-padding positions (the classic KD baseline)."""

    name: Literal["fkl"]
    temperature: float = Field(1.0, gt=0, description="Softmax temperature T.")


class ReverseKLConfig(LossConfig):
    """Token-level reverse KL ``KL(q || p)`` (MiniLLM's objective in its token-level form)."""

    name: Literal["rkl"]


class SkewKLConfig(LossConfig):
    """DistiLLM's skew KL ``KL(p || a p + (1 - a) q)``."""

    name: Literal["skl"]
    alpha: float = Field(0.1, ge=0, lt=1, description="Skew `a`: the teacher's share of the mixture.")


class SkewReverseKLConfig(LossConfig):
    """DistiLLM's skew reverse KL ``KL(q || a q + (1 - a) p)``."""

    name: Literal["srkl"]
    alpha: float = Field(0.1, ge=0, lt=1, description="Skew `a`: the student's share of the mixture.")


class JSDConfig(LossConfig):
    """GKD's generalized Jensen-Shannon divergence ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 -
    beta) q``, on the training sequences."""

    name: Literal["jsd"]
    beta: float = Field(0.5, gt=0, lt=1, description="Interpolation `beta` of the mixture.")


class TaidConfig(LossConfig):
    """TAID: ``KL(p_t || q)`` with ``p_t = softmax((1 - t) stopgrad(z_q) + t z_p)``; ``t`` rises from `t_start` to
    `t_end` by the paper's adaptive, monotone schedule (at least linearly over the stage's steps)."""

    name: Literal["taid"]
    t_start: float = Field(0.4, ge=0, le=1, description="Interpolation `t` at the first step.")
    t_end: float = Field(1.0, gt=0, le=1, description="Largest `t` (reached by the last step at the latest).")
    alpha: float = Field(5e-4, ge=0, description="Step size of the adaptive increase of `t`.")
    beta: float = Field(0.99, ge=0, lt=1, description="Momentum of the loss's relative change.")

    @model_validator(mode="after")
    def _order(self) -> TaidConfig:
        if self.t_start > self.t_end:
            raise ValueError(f"t_start {self.t_start} must not exceed t_end {self.t_end}")
        return self


class _SequenceTerm(LossTerm):
    def __init__(self, cfg: LossConfig) -> None:
        super().__init__(cfg.weight)
        self.cfg = cfg

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        zs, zt = _logits(s, t)
        c, mask = self.cfg, _mask(batch)
        if isinstance(c, ForwardKLConfig):
            return forward_kl(zs, zt, mask=mask, temperature=c.temperature)
        if isinstance(c, ReverseKLConfig):
            return reverse_kl(zs, zt, mask=mask)
        if isinstance(c, SkewKLConfig):
            return skew_kl(zs, zt, alpha=c.alpha, mask=mask)
        if isinstance(c, SkewReverseKLConfig):
            return skew_reverse_kl(zs, zt, alpha=c.alpha, mask=mask)
        assert isinstance(c, JSDConfig)
        return generalized_jsd(zs, zt, beta=c.beta, mask=mask)


class TaidTerm(LossTerm):
    """TAID with its schedule's state in buffers (saved in training checkpoints). `advance` is called after each
    optimiser step with the step's loss; under several processes the loss is averaged first, so every process
    keeps the same ``t``."""

    def __init__(self, cfg: TaidConfig) -> None:
        super().__init__(cfg.weight)
        self.schedule = TaidSchedule(cfg.t_start, cfg.t_end, cfg.alpha, cfg.beta)
        self.register_buffer("t", torch.tensor(cfg.t_start, dtype=torch.float64))
        self.register_buffer("momentum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("previous", torch.tensor(math.nan, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._losses: list[float] = []

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: b for k, b in self.named_buffers() if k in ("t", "momentum", "previous", "step")}

    def interpolation(self) -> float:
        """The current ``t``."""
        return float(self._state()["t"])

    def forward(self, s: Captured, t: Captured, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        zs, zt = _logits(s, t)
        loss = taid_loss(zs, zt, t=self.interpolation(), mask=_mask(batch))
        if torch.is_grad_enabled():
            self._losses.append(float(loss.detach()))
        return loss

    def advance(self, step: int, total: int) -> None:
        """After optimiser step ``step`` of ``total``: update ``t`` from the step's loss."""
        losses, self._losses = self._losses, []
        state = self._state()
        if step <= int(state["step"]) or not losses:
            return
        value = torch.tensor(sum(losses) / len(losses), dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            part = value.float().to(state["t"].device)
            torch.distributed.all_reduce(part)
            value = part.double().cpu() / torch.distributed.get_world_size()
        self.schedule.update(state, float(value), step, total)


LOSSES.add("fkl", LossDef(ForwardKLConfig, lambda c, s, t, b: _SequenceTerm(c)))
LOSSES.add("rkl", LossDef(ReverseKLConfig, lambda c, s, t, b: _SequenceTerm(c)))
LOSSES.add("skl", LossDef(SkewKLConfig, lambda c, s, t, b: _SequenceTerm(c)))
LOSSES.add("srkl", LossDef(SkewReverseKLConfig, lambda c, s, t, b: _SequenceTerm(c)))
LOSSES.add("jsd", LossDef(JSDConfig, lambda c, s, t, b: _SequenceTerm(c)))
LOSSES.add("taid", LossDef(TaidConfig, lambda c, s, t, b: TaidTerm(c)))  # type: ignore[arg-type]
