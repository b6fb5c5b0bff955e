"""LaDiMo stage 2: a routing policy per layer, top-k or a cumulative router-probability threshold, chosen
against an accuracy budget with the fewest active experts as the latency objective (the cost of a token
grouped MoE layer on CPU is its active experts, see benchmarks/moe_sst2.py for the measured relation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from compress.moe.experts import MoeFfn

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class Candidate:
    top_k: int | None
    threshold: float | None
    active: float  # mean fraction of experts a token uses (measured on calibration tokens for thresholds)

    def describe(self) -> str:
        return f"threshold {self.threshold:g}" if self.threshold is not None else f"top-{self.top_k}"


def apply(moe: MoeFfn, cand: Candidate) -> None:
    moe.top_k = cand.top_k if cand.top_k is not None else moe.experts
    moe.threshold = cand.threshold


def dense(moe: MoeFfn) -> Candidate:
    return Candidate(moe.experts, None, 1.0)


@torch.no_grad()
def candidates(moe: MoeFfn, kind: str, x: torch.Tensor) -> list[Candidate]:
    """Policies for one layer, fewest active experts first; the last is all experts (dense, exact)."""
    if kind == "topk":
        return [Candidate(k, None, k / moe.experts) for k in range(1, moe.experts + 1)]
    probs = moe.probabilities(x[:8192])
    out = [Candidate(None, t, float(moe.select(probs, threshold=t).float().mean())) for t in THRESHOLDS]
    return sorted(out, key=lambda c: c.active) + [dense(moe)]


@torch.no_grad()
def fixed(moe: MoeFfn, top_k: int | None, threshold: float | None, x: torch.Tensor) -> Candidate:
    """A policy given in the recipe, with its measured share of active experts."""
    if top_k is not None:
        return Candidate(top_k, None, top_k / moe.experts)
    active = float(moe.select(moe.probabilities(x[:8192]), threshold=threshold).float().mean())
    return Candidate(None, threshold, active)


@torch.no_grad()
def routing_profile(moe: MoeFfn, x: torch.Tensor) -> list[float]:
    """Mean router probability of the 1st, 2nd, ... most probable expert: how peaked routing is in a layer."""
    probs = moe.probabilities(x[:8192]).sort(dim=-1, descending=True).values
    return [float(v) for v in probs.mean(0)]


def search(moes: list[MoeFfn], options: list[list[Candidate]], evaluate: Callable[[], float],
           max_drop: float) -> tuple[list[Candidate], dict[str, Any]]:  # fmt: skip
    """Per layer the cheapest policy within ``max_drop`` (accuracy points on the dev subset):

    1. each layer alone (the others dense): the dev accuracy of every candidate;
    2. every layer starts at its cheapest candidate that alone stays within the budget;
    3. while the layers together exceed it, the layer whose current choice costs the most accuracy on its own
       moves to its next, costlier candidate."""
    for m in moes:
        apply(m, dense(m))
    base = evaluate()
    own: list[dict[Candidate, float]] = []
    for moe, cands in zip(moes, options, strict=True):
        drops = {}
        for cand in cands[:-1]:
            apply(moe, cand)
            drops[cand] = 100 * (base - evaluate())
        apply(moe, dense(moe))
        drops[cands[-1]] = 0.0
        own.append(drops)
    pick = [next(i for i, c in enumerate(cands) if own[layer][c] <= max_drop) for layer, cands in enumerate(options)]
    rounds = 0
    while True:
        for moe, cands, i in zip(moes, options, pick, strict=True):
            apply(moe, cands[i])
        acc = evaluate()
        rounds += 1
        if 100 * (base - acc) <= max_drop:
            break
        movable = [n for n, i in enumerate(pick) if i < len(options[n]) - 1]
        if not movable:
            break
        worst = max(movable, key=lambda n: own[n][options[n][pick[n]]])
        pick[worst] += 1
    chosen = [cands[i] for cands, i in zip(options, pick, strict=True)]
    table = [{c.describe(): round(d, 3) for c, d in drops.items()} for drops in own]
    return chosen, {"dense_dev_accuracy": base, "dev_accuracy": acc, "joint_rounds": rounds, "own_drops": table}
