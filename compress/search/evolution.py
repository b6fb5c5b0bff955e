"""Evolutionary search under hard constraints (regularised by keeping the top half as parents).

Each generation: the best ``population // 2`` candidates so far are parents; children come from crossover of
two parents chosen by tournament, then mutation; children that break the budget or were seen are dropped.
Small spaces (no bigger than the evaluations allowed) are enumerated exhaustively instead.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from compress.errors import StageError
from compress.search.space import Arch, Space, arch_key
from compress.ui import Bar, progress

# Scores and feasibility are evaluated a generation at a time so latency tables can be filled in one batch.
ScoreFn = Callable[[list[Arch]], list[dict[str, float]]]
FeasibleFn = Callable[[list[Arch]], list[list[str]]]  # per arch: the budget violations (empty: feasible)


@dataclass
class Evaluated:
    arch: Arch
    score: float
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchResult:
    ranked: list[Evaluated]
    evaluated: int
    rejected: int
    exhaustive: bool


def _tick(bar: Bar, pool: list[Evaluated], n: int = 1) -> None:
    bar.advance(n)
    bar.describe(f"best score {max(p.score for p in pool):.4f} ({len(pool)} scored)")


def _feasible_batch(archs: list[Arch], feasible: FeasibleFn, seen: set[str]) -> tuple[list[Arch], int]:
    fresh = []
    for a in archs:
        k = arch_key(a)
        if k not in seen:
            seen.add(k)
            fresh.append(a)
    verdicts = feasible(fresh) if fresh else []
    ok = [a for a, v in zip(fresh, verdicts, strict=True) if not v]
    return ok, len(fresh) - len(ok)


def evolve(
    space: Space,
    score: ScoreFn,
    feasible: FeasibleFn,
    *,
    population: int,
    generations: int,
    mutation_prob: float,
    seed: int,
    all_archs: list[Arch] | None = None,
) -> SearchResult:
    rng = random.Random(seed)
    seen: set[str] = set()
    pool: list[Evaluated] = []
    budget = population * (generations + 1)
    exhaustive = all_archs is not None and len(all_archs) <= budget
    rejected = 0

    def add(archs: list[Arch]) -> None:
        for a, parts in zip(archs, score(archs), strict=True):
            pool.append(Evaluated(a, parts["score"], parts))

    if exhaustive:
        assert all_archs is not None
        ok, rejected = _feasible_batch(all_archs, feasible, seen)
        if not ok:
            raise StageError(f"no candidate of the {len(all_archs)} in the space meets the budget.")
        with progress("search (exhaustive)", len(ok)) as bar:
            for i in range(0, len(ok), population):
                add(ok[i : i + population])
                _tick(bar, pool, len(ok[i : i + population]))
        return SearchResult(sorted(pool, key=lambda e: -e.score), len(pool), rejected, True)

    init: list[Arch] = []
    tries = 0
    while len(init) < population and tries < 50:
        ok, bad = _feasible_batch([space.sample(rng) for _ in range(population)], feasible, seen)
        init += ok
        rejected += bad
        tries += 1
    if not init:
        raise StageError(f"none of {len(seen)} sampled candidates meets the budget; loosen it or shrink the space.")
    with progress("search (evolution)", generations + 1) as bar:
        add(init[:population])
        _tick(bar, pool)
        for _ in range(generations):
            parents = sorted(pool, key=lambda e: -e.score)[: max(2, population // 2)]
            children: list[Arch] = []
            for _attempt in range(20):
                want = population - len(children)
                if want <= 0:
                    break
                kids = []
                for _ in range(want):
                    a, b = (max(rng.sample(parents, min(3, len(parents))), key=lambda e: e.score) for _ in range(2))
                    kids.append(space.mutate(space.crossover(a.arch, b.arch, rng), rng, mutation_prob))  # type: ignore[arg-type]
                ok, bad = _feasible_batch(kids, feasible, seen)
                children += ok
                rejected += bad
            if children:
                add(children)
            _tick(bar, pool)
    return SearchResult(sorted(pool, key=lambda e: -e.score), len(pool), rejected, False)
