"""Distillation losses as plain functions: tensors in, scalar out, hyper-parameters keyword-only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Logit distillation (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network").

    ``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch. The ``T^2`` factor keeps the
    gradient scale independent of the temperature.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (t * t)


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with the ground-truth labels: ``-mean(log softmax(s)[y])``. Next-token logits ``(B, S, V)``
    with labels ``(B, S)`` average over the positions whose label is not -100 (the language-modelling loss)."""
    if student_logits.dim() == 3:
        return F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                               label_smoothing=label_smoothing)  # fmt: skip
    return F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)


def hint_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """FitNets hint (Romero et al., 2015, "FitNets: Hints for Thin Deep Nets").

    ``mean((r(f_s) - f_t)^2)`` where the caller has already applied the learned regressor ``r``. For token
    features ``(B, S, H)`` a ``(B, S)`` mask excludes padding positions.
    """
    diff = (student_feature - teacher_feature).pow(2)
    if mask is None:
        return diff.mean()
    m = mask.unsqueeze(-1).to(diff.dtype)
    return (diff * m).sum() / (m.sum() * diff.shape[-1]).clamp_min(1.0)


def attention_relation(
    x: torch.Tensor, heads: int, mask: torch.Tensor | None, *, causal: bool = False
) -> torch.Tensor:
    """Log of the scaled dot-product relation ``softmax(X_h X_h^T / sqrt(d_h))`` per relation head.

    ``x``: ``(B, S, D)`` -> ``(B, heads, S, S)`` log-probabilities over keys; padded keys get no mass, nor do later
    positions when ``causal`` (the relations a causal decoder's attention can form).
    """
    b, s, d = x.shape
    if d % heads:
        raise ValueError(f"width {d} is not divisible by {heads} relation heads")
    xh = x.view(b, s, heads, d // heads).transpose(1, 2)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    if causal:
        future = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def minilm_relation_loss(
    student_qkv: list[torch.Tensor],
    teacher_qkv: list[torch.Tensor],
    *,
    relation_heads: int,
    mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Self-attention relation distillation (Wang et al., 2021, "MiniLMv2: Multi-Head Self-Attention
    Relation Distillation for Compressing Pretrained Transformers").

    For each of Q, K and V: ``KL(R_t || R_s)`` with ``R = softmax(X X^T / sqrt(d_r))`` computed over
    ``relation_heads`` heads (so teacher and student widths may differ), averaged over heads and over
    non-padding query positions, then averaged over Q, K, V. ``causal``: each position relates only to itself and
    earlier ones (causal decoders).
    """
    total = student_qkv[0].new_zeros(())
    for xs, xt in zip(student_qkv, teacher_qkv, strict=True):
        log_rs = attention_relation(xs, relation_heads, mask, causal=causal)
        log_rt = attention_relation(xt, relation_heads, mask, causal=causal)
        kl = (log_rt.exp() * (log_rt - log_rs)).sum(-1)  # (B, heads, S)
        if mask is None:
            total = total + kl.mean()
        else:
            q = mask[:, None, :].to(kl.dtype)
            total = total + (kl * q).sum() / (q.sum() * kl.shape[1]).clamp_min(1.0)
    return total / len(student_qkv)


def l1_cosine_loss(
    student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor], *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Layer-to-layer distillation of DPHuBERT (Peng et al., 2023), after DistilHuBERT (Chang et al., 2022).

    For each chosen layer pair: ``mean |h_s - h_t|`` plus the cosine distance ``1 - cos(h_s, h_t)`` per token,
    averaged over non-padding tokens, then over layers. Hidden sizes must match (the student is a pruned copy).
    """
    total = student_hidden[0].new_zeros(())
    for hs, ht in zip(student_hidden, teacher_hidden, strict=True):
        l1 = (hs - ht).abs().mean(-1)
        cos = 1.0 - F.cosine_similarity(hs, ht, dim=-1)
        per_token = l1 + cos
        if mask is None:
            total = total + per_token.mean()
        else:
            m = mask.to(per_token.dtype)
            total = total + (per_token * m).sum() / m.sum().clamp_min(1.0)
    return total / len(student_hidden)


def _valid_queries(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, S)`` weights of the query positions to average over (all ones without a mask)."""
    if mask is None:
        return like.new_ones(like.shape[0], like.shape[-2])
    return mask.to(like.dtype)


def attention_map_loss(
    student_probs: list[torch.Tensor],
    teacher_probs: list[torch.Tensor],
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Attention-map loss of quantization-aware distillation (Kim et al., 2022, "Understanding and Improving
    Knowledge Distillation for Quantization-Aware Training of Large Transformer Encoders").

    For each layer ``l``, head ``h`` and query ``i``: ``KL(A^T_{l,h,i} || A^S_{l,h,i}) = sum_j A^T log(A^T / A^S)``
    over the key positions ``j`` of the attention probabilities ``(B, heads, S, S)``; averaged over heads and
    non-padding queries, then over layers. ``eps`` keeps the log finite where a student probability is 0.
    """
    total = student_probs[0].new_zeros(())
    for ps, pt in zip(student_probs, teacher_probs, strict=True):
        kl = (torch.xlogy(pt, pt) - pt * torch.log(ps.clamp_min(eps))).sum(-1)  # (B, heads, S)
        q = _valid_queries(mask, ps)
        total = total + (kl.mean(1) * q).sum() / q.sum().clamp_min(1.0)
    return total / len(student_probs)


def attention_output_loss(
    student_context: list[torch.Tensor], teacher_context: list[torch.Tensor], *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention-output loss of quantization-aware distillation (Kim et al., 2022, as above).

    For each layer: ``mean((O^S - O^T)^2)`` between the self-attention outputs (the context vectors
    ``softmax(QK^T / sqrt(d)) V`` of every head, concatenated, before the output projection) ``(B, S, H)``,
    over non-padding tokens and features; averaged over layers.
    """
    total = student_context[0].new_zeros(())
    for cs, ct in zip(student_context, teacher_context, strict=True):
        total = total + hint_loss(cs, ct, mask=mask)
    return total / len(student_context)


def sinkhorn_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 2.0,
    epsilon: float = 0.1,
    iterations: int = 20,
) -> torch.Tensor:
    """SinKD (Cui et al., 2024, "Sinkhorn Distance Minimization for Knowledge Distillation"), batch-wise.

    With ``s_i = softmax(z_s,i / T)`` and ``t_j = softmax(z_t,j / T)`` for the ``B`` examples of the batch, the
    cost of moving student example ``i`` onto teacher example ``j`` is ``C_ij = ||s_i - t_j||_1``; the entropic
    transport plan ``P`` is ``K = exp(-C / epsilon)`` made doubly stochastic by ``iterations`` alternating
    Sinkhorn normalisations (rows, then columns, each summing to 1); the loss is ``sum_ij P_ij C_ij / B``.
    Gradients flow through both ``P`` and ``C`` (as in the authors' code); the teacher is detached.
    """
    s = F.softmax(student_logits / temperature, dim=-1)
    t = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    cost = torch.cdist(s, t, p=1)
    plan = torch.exp(-cost / epsilon)
    for _ in range(iterations):
        plan = plan / plan.sum(dim=1, keepdim=True)
        plan = plan / plan.sum(dim=0, keepdim=True)
    return (plan * cost).sum() / s.shape[0]


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``x`` (exactly 0 on the diagonal), normalised by their mean
    over distinct pairs."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)
    d = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt() * (1 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))
    off = d[~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)]
    return d / off.mean().clamp_min(1e-12)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """``A[j, i, k] = <e_ij, e_kj>`` with ``e_ij = (x_i - x_j) / ||x_i - x_j||``: the cosine of the angle at
    ``x_j`` of every triplet."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=-1)  # e[j, i] = unit(x_i - x_j)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> torch.Tensor:
    """Relational KD (Park et al., 2019, "Relational Knowledge Distillation"), on one embedding per example.

    Distance-wise: ``psi_D(x_i, x_j) = ||x_i - x_j|| / mu`` with ``mu`` the mean distance over distinct pairs of the
    batch; angle-wise: ``psi_A(x_i, x_j, x_k) = <e_ij, e_kj>``, ``e_ij = (x_i - x_j) / ||x_i - x_j||``. The loss is
    ``distance_weight * mean Huber(psi_D(s), psi_D(t)) + angle_weight * mean Huber(psi_A(s), psi_A(t))`` over all
    pairs / triplets (Huber with delta 1: PyTorch's smooth L1). Relations do not depend on the width, so student
    and teacher embeddings may differ in size; the teacher is detached. Defaults are the paper's weights.
    """
    if student.shape[0] < 3:
        return student.new_zeros(())  # no triplet, no relation to compare
    t = teacher.detach()
    loss = student.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * F.smooth_l1_loss(_pairwise_distances(student), _pairwise_distances(t))
    if angle_weight:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(student), _angles(t))
    return loss


# ---- token-level distributions (causal LMs) ---------------------------------------------------------------------
def token_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-position values ``(B, S)`` over the positions the mask keeps."""
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def kl_per_position(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b)`` per position, summed over the last dimension, from log-probabilities (0 * log 0 = 0)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """Forward KL, the classic token-level KD baseline (Hinton et al., 2015; mode-covering):

    ``T^2 * mean_tokens sum_v p_T(v) (log p_T(v) - log q_T(v))`` with ``p_T = softmax(z_p / T)``, ``q_T =
    softmax(z_q / T)``.
    """
    t = temperature
    log_q = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return token_mean(kl_per_position(log_p, log_q), mask) * (t * t)
