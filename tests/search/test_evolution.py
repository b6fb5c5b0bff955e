"""Evolutionary search: finds the optimum of a known score, never returns a candidate outside the budget."""

from __future__ import annotations

import pytest

from compress.errors import StageError
from compress.search.evolution import evolve
from compress.search.space import CnnSpace, TransformerSpace

SPACE = CnnSpace(block=["plain", "resnet"], stages=[2, 3], depth=[1, 2, 3], width=[8, 16, 24, 32, 48], kernel=[3, 5])


def score(archs: list[dict]) -> list[dict[str, float]]:  # best: as wide as allowed, resnet, kernel 3
    return [{"score": sum(a["widths"]) - 5 * (a["block"] != "resnet") - (a["kernel"] != 3)} for a in archs]


def budget(archs: list[dict]) -> list[list[str]]:  # at most 64 channels in total
    return [[] if sum(a["widths"]) <= 64 else ["too wide"] for a in archs]


def test_evolution_respects_the_budget_and_improves() -> None:
    res = evolve(SPACE, score, budget, population=8, generations=8, mutation_prob=0.3, seed=0)
    assert all(sum(e.arch["widths"]) <= 64 for e in res.ranked)
    assert res.rejected > 0 and not res.exhaustive
    first_gen_best = max(e.score for e in res.ranked[-8:])
    assert res.ranked[0].score >= first_gen_best
    assert res.ranked[0].score >= 63  # near the optimum (64, resnet, k3)


def test_evolution_is_deterministic_for_a_seed() -> None:
    a = evolve(SPACE, score, budget, population=6, generations=3, mutation_prob=0.3, seed=1)
    b = evolve(SPACE, score, budget, population=6, generations=3, mutation_prob=0.3, seed=1)
    assert [e.arch for e in a.ranked] == [e.arch for e in b.ranked]


def test_small_spaces_are_enumerated() -> None:
    space = TransformerSpace(layers=[1, 2], hidden=[32, 64], heads=[2], ffn=[64])
    res = evolve(
        space, lambda xs: [{"score": x["layers"] * x["hidden"]} for x in xs], lambda xs: [[]] * len(xs),
        population=4, generations=2, mutation_prob=0.3, seed=0, all_archs=space.all(),
    )  # fmt: skip
    assert res.exhaustive and res.evaluated == 4 and res.ranked[0].arch["hidden"] == 64


def test_no_feasible_candidate_is_an_error() -> None:
    with pytest.raises(StageError, match="meets the budget"):
        evolve(SPACE, score, lambda xs: [["no"]] * len(xs), population=4, generations=1, mutation_prob=0.3, seed=0)
