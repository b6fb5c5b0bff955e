"""`search`: pick the student architecture for this teacher and budget (DisWOT or AutoDistil)."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import Discriminator, Field, Tag

from compress.artifacts import Artifacts
from compress.config import ArtifactName, Strict, TrainSchedule
from compress.context import Context
from compress.data.dataset import DataBundle
from compress.devices import resolve_device
from compress.errors import StageError
from compress.families import family_of
from compress.families.methods import SEARCH_AUTODISTIL, SEARCH_DISWOT, Method, Searcher
from compress.losses import LossConfig, build_terms, default_losses, loss_config_union
from compress.models.task_model import TaskModel
from compress.search.budget import Cost, SearchBudget, static_cost
from compress.search.evolution import Evaluated, ScoreFn, SearchResult, evolve
from compress.search.latency import CnnLatency, TransformerLatency, latency_model
from compress.search.space import Arch, CnnSpace, Space, TransformerSpace, arch_key
from compress.stages.base import Chain, StageConfig, check_method, register_stage, require, save_model_artifact

log = logging.getLogger("compress")
if TYPE_CHECKING:
    LossUnion = LossConfig
else:
    LossUnion = loss_config_union()


def _space_kind(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("kind") or ("transformer" if {"layers", "hidden", "heads", "ffn"} & set(v) else "cnn"))
    return str(getattr(v, "kind", "cnn"))


SpaceField = Annotated[
    Annotated[CnnSpace, Tag("cnn")] | Annotated[TransformerSpace, Tag("transformer")], Discriminator(_space_kind)
]


class Evolution(Strict):
    """Evolutionary search settings (spaces no larger than population x (generations + 1) are enumerated)."""

    population: int = Field(16, ge=2, description="Candidates per generation.")
    generations: int = Field(10, ge=0, description="Generations after the initial population.")
    mutation_prob: float = Field(0.3, gt=0, le=1, description="Probability of re-drawing each choice.")


class Supernet(Strict):
    """AutoDistil super-network training, per sub-space."""

    subspaces: int = Field(2, ge=1, description="K: sub-spaces (groups of hidden sizes), one super-network each.")
    steps: int = Field(300, gt=0, description="Sandwich-rule steps per super-network.")
    batch_size: int = Field(32, gt=0, description="Unlabelled sentences per step.")
    lr: float = Field(5e-5, gt=0, description="AdamW peak learning rate (linear warm-up 10%, then decay).")
    random_subnets: int = Field(2, ge=0, description="Random sub-networks per step, besides the largest and smallest.")
    eval_batches: int = Field(8, gt=0, description="Held-out (dev) batches that score each sub-network.")


class Rerank(TrainSchedule):
    """Distillation-aware choice: the best-scored candidates that measure within the budget each get a short
    distillation with the losses the `distill` stage will train with (from their super-network weights under
    AutoDistil, their initialisation under DisWOT), and the best on the dev split is chosen. The chosen student
    leaves the stage untrained by it (the short runs only rank); their dev metrics are in the report."""

    candidates: int = Field(3, ge=2, description="Best candidates within the budget that are distilled and compared.")
    max_steps: int | None = Field(200, gt=0, description="Distillation steps per candidate.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    warmup_steps: int = Field(20, ge=0, description="Linear warm-up steps before linear decay to 0.")
    losses: list[LossUnion] = Field(
        default_factory=default_losses,
        description="Weighted loss terms, as in `distill`. Default: the losses of the recipe's next `distill` "
        "stage (filled in before validation), else kd + ce.",
    )


class _SearchBase(StageConfig):
    stage: Literal["search"]
    budget: SearchBudget = Field(
        ...,
        description="Limits every candidate must meet; `recipe`: the recipe budget's latency limit on its device "
        "(`budgets`, `deploy.device`), timed on the graph `deploy.precision` deploys; when a later `prune` stage "
        "has `target: budget`, 25% above the limit, which pruning then removes.",
    )
    evolution: Evolution = Field(default_factory=Evolution)  # type: ignore[arg-type]
    top_k: int = Field(
        5,
        gt=0,
        description="Best candidates measured end to end and kept in the report; while none of them meets a latency "
        "budget, the next `top_k` are measured too (three batches at most).",
    )
    latency_rounds: int = Field(
        3,
        ge=1,
        le=20,
        description="With `budget.max_latency_ms`: benchmark processes that measure the top candidates end to end "
        "(each in a rotated order). A candidate is chosen only when the median of its rounds meets the budget: "
        "with 3 or more rounds, neither one lucky round nor one slowed by another process decides.",
    )
    rerank: Rerank | None = Field(
        None,
        description="Choose among the best candidates by a short distillation with the `distill` stage's losses "
        "instead of by the search score alone (`{}` for the defaults: 3 candidates, 200 steps each).",
    )
    output: ArtifactName = Field("student", description="Name of the produced model artifact.")

    def latency_devices(self) -> dict[str, str]:
        return {"budget.device": self.budget.device} if self.budget.max_latency_ms is not None else {}

    def produces(self) -> str | None:
        return self.output

    def check(self, chain: Chain) -> list[str]:
        key = chain.key
        problems = check_method(chain, "search", self.method)  # type: ignore[attr-defined]
        if self.budget.max_latency_ms is not None and not chain.supports("search:latency"):
            problems.append(f"{key}.budget.max_latency_ms: latency tables time encoders and CNNs, not the "
                            f"generation of {chain.member}; give max_params or max_mflops.")  # fmt: skip
        misfit = chain.space_problem(getattr(self, "space", None))
        if misfit is not None:
            problems.append(f"{key}.space: {misfit}")
        return problems


class DiswotConfig(_SearchBase):
    """DisWOT: rank candidates without training by how closely their randomly initialised features relate
    samples (and classes) as the teacher's do; the chosen student trains in the next stage."""

    method: Literal["diswot"] = Field(
        ..., description="`diswot` (training-free score) or `autodistil` (weight-sharing super-networks)."
    )
    space: SpaceField | None = Field(
        None,
        description="The search space: CNN keys (block, stages, depth, width, kernel, expansion) or Transformer "
        "keys (layers, hidden, heads, ffn). Default: derived from the teacher.",
    )
    batch_size: int = Field(64, gt=1, description="Examples in the scoring batch.")
    semantic: Literal["class", "sample"] = Field(
        "class",
        description="Semantic similarity: `class` (class-by-class Gram of the class-activation weights, "
        "the paper's) or `sample` (sample-by-sample Gram of per-sample Grad-CAM / attention maps).",
    )
    feature: str | None = Field(
        None, description="On image teachers: module path of the teacher's last feature map (default: found)."
    )


class AutodistilConfig(_SearchBase):
    """AutoDistil: train weight-sharing super-networks (one per group of hidden sizes) by task-agnostic
    self-attention distillation, rank their sub-networks on held-out data; the chosen one keeps its weights."""

    method: Literal["autodistil"] = Field(..., description="`autodistil`.")
    space: TransformerSpace | None = Field(
        None,
        description="The Transformer search space (layers, hidden, heads, ffn). Default: derived from the teacher.",
    )
    supernet: Supernet = Field(default_factory=Supernet)  # type: ignore[arg-type]


SearchConfig = DiswotConfig | AutodistilConfig


def _searcher(method: str, teacher: TaskModel) -> Searcher:
    """The search method's pieces for the teacher's family (a clear error when it has none)."""
    wanted: Method[Searcher] = SEARCH_AUTODISTIL if method == "autodistil" else SEARCH_DISWOT
    return family_of(teacher).method(wanted, "search", teacher)


class Costs:
    """Params / FLOPs (memoised) and predicted latency of candidates; the budget verdict of each."""

    def __init__(self, space: Space, teacher: TaskModel, data: DataBundle, config: SearchConfig, ctx: Context):
        self.space, self.teacher, self.budget = space, teacher, config.budget
        self.searcher = _searcher(config.method, teacher)
        self.in_channels, self.seed = data.in_channels, ctx.seed
        self.image_shape = self.searcher.input_shape(data)
        self.cache: dict[str, Cost] = {}
        self.latency: CnnLatency | TransformerLatency | None = None
        if self.budget.max_latency_ms is not None:
            device = resolve_device(self.budget.device, ctx.base_dir)
            self.latency = latency_model(
                space, device, sequence=self.budget.sequence, teacher=teacher, image_shape=self.image_shape,
                classes=teacher.num_labels, cache_dir=ctx.out_dir / ".cache" / "latency",
                precision=self.budget.precision, statistic=self.budget.percentile,
            )  # fmt: skip

    def static(self, arch: Arch) -> Cost:
        key = arch_key(arch)
        if key not in self.cache:
            model = self.searcher.candidate(self.space, arch, self.teacher, in_channels=self.in_channels,
                                            seed=self.seed)  # fmt: skip
            self.cache[key] = static_cost(model, self.budget.sequence, self.image_shape)
        return self.cache[key]

    def violations(self, archs: list[Arch]) -> list[list[str]]:
        costs = [self.static(a) for a in archs]
        verdicts = [c.violations(self.budget) for c in costs]
        if self.latency is not None:
            todo = [i for i, v in enumerate(verdicts) if not v]
            for i, ms in zip(todo, self.latency.predict([archs[i] for i in todo]), strict=True):
                costs[i].latency_ms = ms
                verdicts[i] = costs[i].violations(self.budget)
        return verdicts


def _check_budget_reachable(costs: Costs) -> None:
    archs = costs.space.smallest_candidates()
    verdicts = costs.violations(archs)
    if all(verdicts):
        i = min(range(len(archs)), key=lambda j: costs.static(archs[j]).params)
        arch, why = archs[i], verdicts[i]
        raise StageError(
            f"search.budget: no candidate can meet it; the smallest in the space "
            f"({costs.space.describe(arch)}) already has {'; '.join(why)}. Loosen the budget or shrink the space."
        )


# ---- the two methods ----------------------------------------------------------------------------------
Extra = tuple[dict[str, Any], list[dict[str, Any]]] | None  # AutoDistil: super-network per arch, trainings


def _diswot(
    config: DiswotConfig, space: Space, teacher: TaskModel, data: DataBundle, costs: Costs, ctx: Context
) -> tuple[SearchResult, Extra]:
    from compress.search.diswot import diswot_score, last_feature_path, signature

    family, searcher = family_of(teacher), costs.searcher
    feature = config.feature or last_feature_path(teacher)
    batch = next(iter(data.train.loader(config.batch_size, shuffle=True, seed=ctx.seed)))
    t_sig = signature(teacher, batch, feature)

    def score(archs: list[Arch]) -> list[dict[str, float]]:
        out = []
        for arch in archs:
            cand = family.adopt(searcher.candidate(space, arch, teacher, in_channels=data.in_channels,
                                                   seed=ctx.seed))  # fmt: skip
            s_sig = signature(cand, batch, last_feature_path(cand), candidate=True)
            out.append(diswot_score(t_sig, s_sig, semantic=config.semantic))
        return out

    result = _evolve(config, space, score, costs, space.enumerable())
    return result, None


def _autodistil(
    config: AutodistilConfig, space: TransformerSpace, teacher: TaskModel, data: DataBundle, costs: Costs, ctx: Context
) -> tuple[SearchResult, Extra]:
    from compress.search.autodistil import HeldOut, relation_heads, train_supernet
    from compress.search.supernet import SlicedSuperNet

    searcher = family_of(teacher).method(SEARCH_AUTODISTIL, "search", teacher)
    heads = relation_heads(space, teacher)
    held: HeldOut | None = None
    ranked: list[Evaluated] = []
    nets: dict[str, Any] = {}
    trainings: list[dict[str, Any]] = []
    evaluated = rejected = 0
    subspaces = space.split(config.supernet.subspaces)
    for k, sub in enumerate(subspaces):
        feasible = [a for a, v in zip(sub.all(), costs.violations(sub.all()), strict=True) if not v]
        if not feasible:
            log.info("autodistil: sub-space %d (hidden %s) has no candidate within the budget; skipped", k, sub.hidden)
            continue
        net = searcher.supernet(teacher)
        s = config.supernet
        if held is None:  # the teacher's relations on held-out batches, computed once
            held = HeldOut(teacher, data.dev, s.eval_batches, s.batch_size, heads, net.teacher_qkv_paths())
        label = f"sub-space {k + 1}/{len(subspaces)}"
        trained = _resumed_supernet(net, sub, s, ctx, k)
        if trained is None:
            trained = train_supernet(
                net, teacher, sub, data.train, steps=s.steps, batch_size=s.batch_size, lr=s.lr,
                random_subnets=s.random_subnets, heads=heads, seed=ctx.seed + k, label=label,
            )  # fmt: skip
            _save_supernet(net, trained, sub, s, ctx, k)
        trainings.append(trained.__dict__ | {"hidden": sub.hidden})

        def score(archs: list[Arch], net: SlicedSuperNet = net, held: HeldOut = held) -> list[dict[str, float]]:
            return [{"score": -(loss := held.loss(net, a)), "loss": loss} for a in archs]

        res = _evolve(config, sub, score, costs, sub.all())
        for e in res.ranked:
            nets[arch_key(e.arch)] = net
        ranked += res.ranked
        evaluated, rejected = evaluated + res.evaluated, rejected + res.rejected
    if not ranked:
        raise StageError("search.budget: no sub-network of any sub-space meets the budget.")
    ranked.sort(key=lambda e: -e.score)
    return SearchResult(ranked, evaluated, rejected, True), (nets, trainings)


def _supernet_file(ctx: Context, k: int) -> Path | None:
    from compress.training import checkpoint

    if ctx.checkpoints is None or ctx.engine.checkpoint_every is None:
        return None
    return checkpoint.folder_for(ctx.checkpoints, f"supernet-{k}") / "supernet.pt"


def _save_supernet(net: Any, trained: Any, sub: TransformerSpace, s: Supernet, ctx: Context, k: int) -> None:
    """Keep a trained super-network in the stage's checkpoints: a re-run after a kill or a failed pick (the
    end-to-end latency check comes after every super-network is trained) starts from it, not from the teacher."""
    from compress.training import checkpoint

    path = _supernet_file(ctx, k)
    if path is not None:
        state = {"space": sub.model_dump(), "supernet": s.model_dump(), "seed": ctx.seed, "seconds": trained.seconds}
        checkpoint.save(path, state | {"history": trained.history, "state": net.state_dict()})


def _resumed_supernet(net: Any, sub: TransformerSpace, s: Supernet, ctx: Context, k: int) -> Any:
    """The super-network of sub-space ``k`` a killed or failed run trained with the same settings, loaded into
    ``net``; None when there is none."""
    from compress.search.autodistil import SupernetTraining
    from compress.training import checkpoint

    path = _supernet_file(ctx, k)
    saved = checkpoint.load(path) if path is not None else None
    if saved is None or (saved["space"], saved["supernet"], saved["seed"]) != (sub.model_dump(), s.model_dump(),
                                                                              ctx.seed):  # fmt: skip
        return None
    net.load_state_dict(saved["state"])
    net.eval()
    log.info("autodistil: sub-space %d super-network resumed from %s (trained in %.0f s)", k + 1, path,
             saved["seconds"])  # fmt: skip
    return SupernetTraining(s.steps, saved["seconds"], saved["history"])


def _evolve(
    config: SearchConfig, space: Space, score: ScoreFn, costs: Costs, all_archs: list[Arch] | None
) -> SearchResult:
    e = config.evolution
    t0 = time.perf_counter()
    result = evolve(
        space, score, costs.violations, population=e.population, generations=e.generations,
        mutation_prob=e.mutation_prob, seed=costs.seed, all_archs=all_archs,
    )  # fmt: skip
    dt = time.perf_counter() - t0
    log.info(
        "search: %d candidates scored (%d rejected by the budget) in %.1f s: %.1f candidates/s; best %s (%.4f)",
        result.evaluated, result.rejected, dt, result.evaluated / max(dt, 1e-9),
        space.describe(result.ranked[0].arch), result.ranked[0].score,
    )  # fmt: skip
    return result


# ---- choosing, measuring and building the student ----------------------------------------------------
def _measure_top(top: list[Evaluated], costs: Costs, rounds: int) -> list[list[float]] | None:
    """End-to-end latency of the top candidates in ``rounds`` benchmark processes, to check the table's
    prediction and the budget."""
    if costs.latency is None:
        return None
    with tempfile.TemporaryDirectory(prefix="compress-top-") as tmp:
        paths = []
        for i, e in enumerate(top):
            paths.append(Path(tmp) / f"top{i}.onnx")
            costs.latency.export_full(e.arch, paths[-1])
        return costs.latency.measure(paths, rounds)


def _rows(
    top: list[Evaluated], costs: Costs, measured: list[list[float]] | None, space: Space, start: int = 0
) -> list[dict[str, Any]]:
    rows = []
    for i, e in enumerate(top, start):
        c = costs.static(e.arch)
        rounds = measured[i] if measured else None
        rows.append(
            {
                "rank": i + 1, "arch": e.arch, "describe": space.describe(e.arch), "score": e.score,
                "parts": e.parts, "params": c.params, "mflops": round(c.mflops, 3),
                "predicted_ms": c.latency_ms,
                "measured_ms": statistics.median(rounds) if rounds else None,  # what the pick must meet
                "measured_max_ms": max(rounds) if rounds else None,  # the slowest round
                "measured_rounds_ms": rounds,
            }
        )  # fmt: skip
    return rows


def _within(row: dict[str, Any], budget: SearchBudget) -> bool:
    return budget.max_latency_ms is None or row["measured_ms"] <= budget.max_latency_ms


MEASURED_BATCHES = 3  # batches of `top_k` candidates measured end to end before the search gives up


def _measured_rows(result: SearchResult, costs: Costs, config: SearchConfig, space: Space) -> list[dict[str, Any]]:
    """The top ``top_k`` candidates measured end to end; while none meets the budget, the next ``top_k`` (at most
    `MEASURED_BATCHES` batches: the table can be wrong near the limit, and the next ones are often faster)."""
    rows: list[dict[str, Any]] = []
    for start in range(0, MEASURED_BATCHES * config.top_k, config.top_k):
        batch = result.ranked[start : start + config.top_k]
        if not batch:
            break
        if start:
            log.info("search: none of the %d measured candidates meets the budget; measuring the next %d", start,
                     len(batch))  # fmt: skip
        rows += _rows(batch, costs, _measure_top(batch, costs, config.latency_rounds), space, start)
        if any(_within(r, config.budget) for r in rows):
            break
    return rows


def _pick(rows: list[dict[str, Any]], budget: SearchBudget) -> dict[str, Any]:
    """The best-scored candidate (with a latency budget: the best whose median measured round meets it)."""
    for row in rows:
        if _within(row, budget):
            return row
    raise StageError(
        f"search.budget.max_latency_ms: none of the best {len(rows)} candidates measures within "
        f"{budget.max_latency_ms} ms end to end (medians {[round(r['measured_ms'], 3) for r in rows]} ms; the latency "
        "table predicted them within). Loosen the budget, or measure on a machine no other process loads."
    )


def _rerank(
    rows: list[dict[str, Any]],
    config: Rerank,
    space: Space,
    teacher: TaskModel,
    searcher: Searcher,
    teacher_sha256: str,
    data: DataBundle,
    nets: dict[str, Any],
    ctx: Context,
) -> dict[str, Any]:
    """Distil each candidate of ``rows`` for ``config.max_steps`` steps and return the best on the dev split
    (ties: the better search score). Each row gets ``rerank_dev``."""
    from compress.training.distillation import distillation_step
    from compress.training.engine import Session
    from compress.training.evaluate import selection_metric
    from compress.training.loop import train
    from compress.training.teacher_cache import cached_teacher_outputs

    if len(rows) < 2:
        log.info("search: rerank skipped, %d candidate within the budget among the top %d", len(rows), len(rows))
        return rows[0]
    # search runs in the main process alone (it measures latency): its short runs train there, unsharded
    engine = dataclasses.replace(ctx.engine, rank=0, world=1)
    session = Session(engine, ctx.seed, ctx.checkpoints)
    probe = next(iter(data.train.loader(min(8, len(data.train)))))
    names = [f"loss_{c.name}" for c in config.losses]
    metric, higher = selection_metric(data.dev)
    cached = None  # the teacher's logits do not depend on the candidate: read once
    for row in rows:
        torch.manual_seed(ctx.seed)
        student = searcher.student(space, row["arch"], teacher, data, ctx.seed, nets.get(arch_key(row["arch"])))
        terms = build_terms(config.losses, student, teacher, probe)
        if cached is None and not any(t.teacher_paths for t in terms):  # causal LMs: the teacher runs every step
            cached, _ = cached_teacher_outputs(teacher, teacher_sha256, data, ctx.cache_dir, engine, top_k=None,
                                              batch_size=config.eval_batch_size)  # fmt: skip
        step = distillation_step(student, teacher, terms, names, cached, engine)
        result = train(student, step, data.train, data.dev, config, session=session, extra=torch.nn.ModuleList(terms),
                       label=f"search rerank {row['rank']} ({row['describe']})")  # fmt: skip
        row["rerank_dev"] = result.best_dev
        log.info("search: rerank %s: dev %s %.4f after %d steps", row["describe"], metric, result.best_dev,
                 result.steps)  # fmt: skip
    best = max(rows, key=lambda r: r["rerank_dev"] if higher else -r["rerank_dev"])  # the first of equals
    best["rerank_metric"] = metric
    return best


@register_stage("search", DiswotConfig, AutodistilConfig)
def run(artifacts: Artifacts, config: SearchConfig, ctx: Context) -> Artifacts:
    require(artifacts, "teacher", "search")
    teacher = ctx.load_model(artifacts["teacher"])
    teacher.module.requires_grad_(False)
    searcher = _searcher(config.method, teacher)
    data = ctx.data()
    space = searcher.space(config.space, teacher, "search")
    costs = Costs(space, teacher, data, config, ctx)
    _check_budget_reachable(costs)
    log.info("search: %s over a %s space of %d candidates", config.method, space.kind, space.size())
    t0 = time.perf_counter()
    if isinstance(config, AutodistilConfig):
        result, extra = _autodistil(config, space, teacher, data, costs, ctx)  # type: ignore[arg-type]
    else:
        result, extra = _diswot(config, space, teacher, data, costs, ctx)
    search_s = time.perf_counter() - t0
    rows = _measured_rows(result, costs, config, space)
    chosen = _pick(rows, config.budget)
    nets = extra[0] if extra else {}
    if config.rerank is not None:
        within = [r for r in rows[chosen["rank"] - 1 :] if _within(r, config.budget)][: config.rerank.candidates]
        chosen = _rerank(within, config.rerank, space, teacher, searcher, artifacts["teacher"].sha256, data, nets, ctx)
    student = searcher.student(space, chosen["arch"], teacher, data, ctx.seed, nets.get(arch_key(chosen["arch"])))
    art = save_model_artifact(student, config.output, ctx, "search", "teacher", data, 128)
    art.info["search"] = _info(config, space, result, rows, chosen, search_s, extra)
    log.info("search: chose %s (rank %d)", chosen["describe"], chosen["rank"])
    return {config.output: art}


def _info(
    config: SearchConfig,
    space: Space,
    result: SearchResult,
    rows: list[dict[str, Any]],
    chosen: dict[str, Any],
    seconds: float,
    extra: Extra,
) -> dict[str, Any]:
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows if r["measured_ms"]]
    info: dict[str, Any] = {
        "method": config.method,
        "space": space.model_dump(),
        "space_size": space.size(),
        "budget": config.budget.model_dump(),
        "evaluated": result.evaluated,
        "rejected": result.rejected,
        "exhaustive": result.exhaustive,
        "seconds": round(seconds, 2),
        "top": rows,
        "chosen": chosen,
        "latency_table_mape": sum(errors) / len(errors) if errors else None,
    }
    if extra:
        info["supernets"] = extra[1]
    if config.rerank is not None:
        info["rerank"] = {"steps": config.rerank.max_steps, "losses": [c.name for c in config.rerank.losses],
                          "dev": {r["describe"]: r["rerank_dev"] for r in rows if "rerank_dev" in r}}  # fmt: skip
    return info
