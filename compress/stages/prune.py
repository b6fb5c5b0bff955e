"""`prune`: joint distillation and structured pruning (DPHuBERT) of a Transformer encoder.

Peng et al., 2023, "DPHuBERT: Joint Distillation and Pruning of Self-Supervised Speech Models". The student
starts as a copy of the teacher; hard-concrete masks on heads, attention blocks, FFN units and FFN blocks
train with layer-to-layer distillation (L1 + cosine on hidden states) plus logit KD and the Lagrangian size
term (multipliers by gradient ascent, target ramped in); then the masks become deterministic, masked groups
are removed for real, and distillation continues briefly without masks.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field, model_validator

from compress.artifacts import Artifact, Artifacts
from compress.config import ArtifactName, Strict, TrainSchedule
from compress.context import Context
from compress.data.dataset import Batch
from compress.errors import StageError
from compress.families import Family, family_of
from compress.families.methods import (
    HIDDEN_STATES,
    PRUNE_DPHUBERT,
    PRUNE_LATENCY,
    PRUNE_TORCH_PRUNING,
    LayerStructure,
)
from compress.losses import build_terms
from compress.models.task_model import TaskModel
from compress.pruning.lagrangian import Lagrangian, ramped_target
from compress.pruning.latency_costs import LatencyCosts
from compress.pruning.masked import MaskedGroups, PruneGoal
from compress.stages.base import Chain, StageConfig, check_method, register_stage, require, save_model_artifact
from compress.training.distillation import distillation_step
from compress.training.engine import Engine
from compress.training.loop import StepLoss, TrainResult, adamw, total_steps, train

log = logging.getLogger("compress")


class PruneTarget(Strict):
    """What remains after pruning, as a fraction of the prunable encoder (heads and FFN units). Give one."""

    params: float | None = Field(None, gt=0, lt=1, description="Fraction of prunable encoder parameters to keep.")
    flops: float | None = Field(None, gt=0, lt=1, description="Fraction of prunable encoder FLOPs to keep.")
    latency_ms: float | None = Field(
        None,
        gt=0,
        description="p50 latency in ms on `device` (batch 1, `sequence` tokens) to land on (DPHuBERT); for causal LMs "
        "the decode ms per token after a `sequence`-token prompt (onnxruntime or OpenVINO devices).",
    )
    speedup: float | None = Field(
        None,
        gt=1,
        description="Encoders: land on the teacher's latency divided by this, the teacher being the `teacher` "
        "artifact's fp32 ONNX timed on `reference` in every round of the cost measurement (what "
        "`budgets.<device>.speedup` sets). The teacher's ms and the unpruned model's are each their fastest round: "
        "a shared machine's slow phases slowed the 91 MB MiniLM teacher by 40-70% and a 15 MB int8 student hardly "
        "at all, so a slow round would overstate the speed-up.",
    )
    reference: str | None = Field(
        None, description="Device profile the teacher is timed on for `speedup` (default: `device`)."
    )
    device: str = Field("x86-cpu", description="Device profile that `latency_ms` / `speedup` is measured on.")
    percentile: Literal["p50", "p90"] = Field("p50", description="The latency percentile `latency_ms` is.")
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="The graph `latency_ms` is measured on: `fp32` or `int8`, the int8 graph `device`'s runtime "
        "deploys (onnxruntime: the fused dynamic-int8 graph of `int8: [dynamic]`; OpenVINO: the static QDQ graph "
        "of `int8: [static]`): the costs of heads, units and whole layers are those of the quantized model.",
    )
    if_met: Literal["error", "keep"] = Field(
        "error",
        description="When the source already measures within `latency_ms`: `error`, or `keep` it unpruned (what "
        "`target: budget` sets: an earlier stage may have met the budget already).",
    )
    sequence: int = Field(
        128,
        gt=0,
        description="Sequence length at which `flops` and `latency_ms` are counted (default: `deploy.sequence`, "
        "else 128).",
    )
    corrections: int = Field(
        0,
        ge=0,
        description="`latency_ms` on encoders (opt-in, experimental): after the masked phase the pruned graph is "
        "exported as deployed and timed in turns with the unpruned one; while it is over `latency_ms`, or under it "
        "by more than `tolerance`, the masked phase goes on (a quarter of its steps) towards a target corrected by "
        "the measured error, at most this many times. 0 (default): the cost model alone sets the size.",
    )
    tolerance: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="How far under `latency_ms` (a fraction of it) a pruned model may measure before it is corrected "
        "upwards: latency left unused is accuracy given away. Corrections aim at the middle of the band.",
    )

    @model_validator(mode="after")
    def _one(self) -> PruneTarget:
        if sum(v is not None for v in (self.params, self.flops, self.latency_ms, self.speedup)) != 1:
            raise ValueError("give exactly one of params, flops, latency_ms, speedup")
        if self.reference is not None and self.speedup is None:
            raise ValueError("`reference` is the device a `speedup` is measured against; give `speedup` with it")
        return self

    @property
    def timed(self) -> bool:
        """A latency target (in ms, or a speed-up over the teacher): measured on `device`."""
        return self.latency_ms is not None or self.speedup is not None


class Finetune(TrainSchedule):
    """Distillation after the masked groups are removed (no masks)."""

    epochs: float = Field(0.5, gt=0, description="Passes over the training split.")


class _PruneBase(StageConfig, TrainSchedule):
    stage: Literal["prune"]
    source: str = Field("teacher", description="Artifact to prune (the student starts as a copy of it).")
    teacher: str = Field(
        "teacher",
        description="Artifact the pruned model distils from. `teacher` by default; name the `source` itself (e.g. "
        "`student`) to prune a distilled or searched student against its unpruned self, as DPHuBERT does.",
    )
    target: PruneTarget = Field(
        ...,
        description="Size to land on; `budget`: the recipe budget's latency limit on its device (`budgets`, "
        "`deploy.device`), measured on the graph `deploy.precision` deploys.",
    )
    kd_weight: float = Field(1.0, ge=0, description="Weight of logit KD.")
    temperature: float = Field(2.0, gt=0, description="KD temperature.")
    ce_weight: float = Field(0.0, ge=0, description="Weight of cross-entropy with the labels.")
    output: ArtifactName = Field("student", description="Name of the produced model artifact.")

    def trains(self) -> bool:
        return True

    def produces(self) -> str | None:
        return self.output

    def check(self, chain: Chain) -> list[str]:
        problems = check_method(chain, "prune", self.method)  # type: ignore[attr-defined]
        if not problems and self.target.timed and not chain.supports("prune:latency"):
            problems.append(f"{chain.key}.target: latency targets time Transformer encoders and causal LMs; "
                            f"{chain.member} is not timed. Give a `params` target.")  # fmt: skip
        return problems


    def latency_devices(self) -> dict[str, str]:
        if not self.target.timed:
            return {}
        return {"target.device": self.target.device} | (
            {"target.reference": self.target.reference} if self.target.reference else {})


class DphubertConfig(_PruneBase):
    """DPHuBERT: learn which heads, FFN units and blocks (Transformer encoders) or channels (built-in CNNs) to
    remove while distilling; remove them; distil briefly. The target is a fraction of the prunable structure."""

    method: Literal["dphubert"] = Field(
        "dphubert",
        description="`dphubert` (the default): joint distillation and structured pruning with hard-concrete masks. "
        "`torch_pruning`: dependency-graph channel pruning of CNNs (its own keys: importance, recovery_steps).",
    )
    layer_map: list[int] | None = Field(
        None,
        description="The teacher layer (0-based) whose hidden states each student layer matches. Default: the same "
        "layer when both have as many layers; else the teacher layers the student was initialised from "
        "(`bert.init_from_layers`, or the evenly spaced layers `search` and `bert` students are sliced from).",
    )
    ramp: float = Field(0.5, gt=0, le=1, description="Fraction of the masked steps over which the target ramps in.")
    mask_lr: float = Field(0.02, gt=0, description="Learning rate of the mask parameters (log alpha).")
    lambda_lr: float = Field(0.02, gt=0, description="Learning rate of the Lagrange multipliers (gradient ascent).")
    hidden_weight: float = Field(
        1.0, ge=0, description="Weight of the L1 + cosine hidden-state loss (families with hidden states)."
    )
    layers: list[int] | None = Field(
        None, description="Encoder layers (0-based) distilled layer-to-layer (default: all)."
    )
    finetune: Finetune = Field(default_factory=Finetune)  # type: ignore[arg-type]


class TorchPruningConfig(_PruneBase):
    """torch-pruning: dependency-graph channel pruning of CNNs, step by step with recovery distillation in
    between, then the stage's schedule distils the pruned model. The target is a fraction of the whole model's
    MACs (`flops`) or parameters."""

    method: Literal["torch_pruning"] = Field(..., description="`torch_pruning`.")
    importance: Literal["magnitude", "taylor", "bn_scale"] = Field(
        "magnitude", description="Channel importance (group L2 magnitude, Taylor, BN scale)."
    )
    recovery_steps: int = Field(20, ge=0, description="Distillation steps after each pruning step (a few % per step).")


PruneConfig = DphubertConfig | TorchPruningConfig


def _layer_map(config: DphubertConfig, layers: LayerStructure, student: TaskModel, teacher: TaskModel) -> list[int]:
    """Teacher layer per student layer for the hidden-state loss (see `layer_map`)."""
    s_layers, t_layers = layers.layers(student), layers.layers(teacher)
    if config.layer_map is None:
        return layers.default_map(student, teacher)
    mapping = config.layer_map
    if len(mapping) != s_layers or not all(0 <= t < t_layers for t in mapping):
        raise StageError(
            f"prune.layer_map: {mapping} must give one teacher layer in 0..{t_layers - 1} for each of the "
            f"{s_layers} layers of {config.source!r}."
        )
    return mapping


def _loss_configs(config: _PruneBase, pairs: list[tuple[str, str]] | None = None, weight: float = 0.0) -> list:
    """The stage's distillation terms, from the loss registry: logit KD, CE when weighted, L1 + cosine pairs."""
    from compress.losses.terms import CEConfig, KDConfig, L1CosineConfig

    terms: list = [KDConfig(name="kd", weight=config.kd_weight, temperature=config.temperature)]
    if config.ce_weight > 0:
        terms.append(CEConfig(name="ce", weight=config.ce_weight))
    if pairs:
        terms.append(L1CosineConfig(name="l1_cosine", weight=weight, pairs=pairs))
    return terms


class _Distil(NamedTuple):
    """The distillation step, and the terms' own parameters (projections of a student narrower than its teacher)
    that the loop trains with the student (None: the terms have none)."""

    step: StepLoss
    extra: torch.nn.Module | None


def _step(
    configs: list, student: TaskModel, teacher: TaskModel, sample: Batch, engine: Engine | None = None
) -> _Distil:
    terms = build_terms(configs, student, teacher, sample)
    step = distillation_step(student, teacher, terms, [c.name for c in configs], engine=engine)
    trained = torch.nn.ModuleList(terms)
    return _Distil(step, trained if any(True for _ in trained.parameters()) else None)


@dataclass
class _Latency:
    """A latency target, measured before any mask exists: the device's costs, the limit and what set it."""

    costs: LatencyCosts
    limit_ms: float
    key: str  # the recipe key (and, for a speed-up, how it became ms) that errors name


def _measure_latency(config: DphubertConfig, ctx: Context, family: Family, student: TaskModel,
                     reference: Artifact | None, sample: Batch) -> _Latency:  # fmt: skip
    """Time the family's groups on the target device once (every process prunes to the same target); with a
    `speedup`, the recipe's teacher (``reference``) exported and timed in the same rounds sets the limit."""
    from compress.devices import resolve_device
    from compress.exporters.onnx import export_onnx

    target = config.target
    device = resolve_device(target.device, ctx.base_dir)
    lat = None
    if ctx.engine.is_main:
        with tempfile.TemporaryDirectory(prefix="compress-prune-ref-") as tmp:
            ref = None
            if target.speedup is not None:
                assert reference is not None
                ref = (resolve_device(target.reference or target.device, ctx.base_dir), Path(tmp) / "teacher.onnx")
                export_onnx(ctx.load_model(reference), sample, ref[1])
            costs = family.method(PRUNE_LATENCY, "prune.target", student, "Give a `params` target.")
            lat = costs(student, device, target.sequence, ctx.cache_dir / "latency", precision=target.precision,
                        statistic=target.percentile, reference=ref)  # fmt: skip
        log.info("prune: on %s, %.4f ms per head (group), %.5f ms per FFN unit, %.3f ms fixed (full %.3f ms)",
                 device.name, lat.costs.per_head, lat.costs.per_unit, lat.fixed_ms, lat.full_ms)  # fmt: skip
    lat = ctx.engine.broadcast_object(lat)
    if target.speedup is not None and lat.reference_ms is not None:
        ref_device = target.reference or target.device
        limit = lat.reference_ms / target.speedup
        log.info("prune: the teacher measures %.3f ms on %s (fastest of the same rounds): %gx is %.3f ms",
                 lat.reference_ms, ref_device, target.speedup, limit)  # fmt: skip
        return _Latency(lat, limit, f"prune.target.speedup ({target.speedup:g}x over the teacher's "
                                    f"{lat.reference_ms:.3f} ms on {ref_device})")  # fmt: skip
    return _Latency(lat, float(target.latency_ms), "prune.target.latency_ms")  # type: ignore[arg-type]


def _goal(config: _PruneBase, latency: _Latency | None) -> PruneGoal:
    """What the masks are driven to: a size fraction, or the fraction of the variable latency that fits."""
    from compress.pruning.latency_costs import latency_fraction

    target = config.target
    if latency is None:
        return PruneGoal(params=target.params, flops=target.flops, sequence=target.sequence)
    fraction = latency_fraction(latency.costs, latency.limit_ms, key=latency.key)
    return PruneGoal(sequence=target.sequence, latency=fraction, costs=latency.costs.costs)


TARGET_TOLERANCE = 0.02  # kept fraction above the target by more than this: the target was missed


def _target_check(info: dict[str, Any], kept: float, target: float, output: str) -> dict[str, Any]:
    """Record (and warn about) a pruned model that kept more than its target: never silently."""
    if kept - target > TARGET_TOLERANCE:
        msg = (
            f"{output}: pruning kept {kept:.3f} where the target was {target:.3f} (missed by {kept - target:.3f}). "
            "More masked steps (epochs / max_steps), a larger lambda_lr or a shorter ramp land closer."
        )
        log.warning("prune: %s", msg)
        info["target_missed"] = msg
    return info


def run(artifacts: Artifacts, config: PruneConfig, ctx: Context) -> Artifacts:
    require(artifacts, config.teacher, "prune")
    require(artifacts, config.source, "prune")
    teacher = ctx.load_model(artifacts[config.teacher])
    student = ctx.load_model(artifacts[config.source])
    # lineage: what the pruned model came from (the source's own parent when the output replaces the source)
    parent = (artifacts[config.source].parent or config.teacher) if config.output == config.source else config.source
    if isinstance(config, TorchPruningConfig):
        return _run_torch_pruning(config, teacher, student, ctx, parent)
    reference = None
    if config.target.speedup is not None:  # over the recipe's teacher, whatever the stage distils from
        if "teacher" not in artifacts or artifacts["teacher"].kind != "model":
            raise StageError("prune.target.speedup: the speed-up is over the `teacher` model, and this run has none; "
                             "give `target.latency_ms` instead.")  # fmt: skip
        reference = artifacts["teacher"]
    return _run_dphubert(config, teacher, student, ctx, parent, reference)


register_stage("prune", DphubertConfig, TorchPruningConfig)(run)


def _hidden_pairs(
    config: DphubertConfig, family: Family, student: TaskModel, teacher: TaskModel
) -> tuple[list[tuple[str, str]], list[int]]:
    """Student/teacher feature-tap pairs of the L1 + cosine loss (none when the family has no hidden states)."""
    if config.hidden_weight == 0 or not family.has(HIDDEN_STATES, student):
        return [], []
    structure = family.method(HIDDEN_STATES, "prune", student)
    n_layers = structure.layers(student)
    layers = config.layers or list(range(n_layers))
    if any(not 0 <= i < n_layers for i in layers):
        raise StageError(f"prune.layers: {layers} must be in 0..{n_layers - 1}.")
    mapping = _layer_map(config, structure, student, teacher)
    s_width, t_width = structure.width(student), structure.width(teacher)
    log.info("prune: student layers -> teacher layers %s%s", dict(enumerate(mapping)),
             f" (hidden {s_width} -> {t_width} through learned projections)" if s_width != t_width else "")
    return [(student.features[i], teacher.features[mapping[i]]) for i in layers], mapping


def _run_dphubert(
    config: DphubertConfig, teacher: TaskModel, student: TaskModel, ctx: Context, parent: str,
    reference: Artifact | None = None,
) -> Artifacts:
    """One masked-distillation loop for every family with masked groups (DPHuBERT): the masked phase, the
    latency corrections when asked for, the removal, the fine-tune."""
    family = family_of(student)
    masked_groups = family.method(PRUNE_DPHUBERT, "prune", student, "Prune it with `method: torch_pruning`.")
    pairs, mapping = _hidden_pairs(config, family, student, teacher)
    data = ctx.data()
    teacher.module.eval().requires_grad_(False)
    sample = next(iter(data.train.loader(min(8, len(data.train)))))
    # terms probe the models: before the masks are attached; they hold no state the pruning changes
    distil = _step(_loss_configs(config, pairs, config.hidden_weight), student, teacher, sample, ctx.engine)
    latency = _measure_latency(config, ctx, family, student, reference, sample) if config.target.timed else None
    if latency is not None and latency.costs.full_ms <= latency.limit_ms and config.target.if_met == "keep":
        return _keep_unpruned(config, student, ctx, parent, latency)
    groups = masked_groups(student, _goal(config, latency), "prune", data)
    phase = _MaskedPhase(config, groups, distil, student, ctx)
    log.info("prune: dphubert target %.3f of %s prunable %s", groups.target, f"{groups.full:,.0f}",
             config_unit(config))  # fmt: skip
    masked = phase.train(config, "prune (masks)")
    # without corrections the profile stage's measurement is the check: the graph is not measured twice
    checks = (_latency_checks(config, ctx, groups, latency, student, phase)
              if latency is not None and config.target.corrections > 0 else [])  # fmt: skip
    before = student.num_params()
    kept, structure = groups.finalize()
    log.info("prune: kept %.4f of the prunable size (target %.3f); %d -> %d parameters; structure %s",
             kept, groups.target, before, student.num_params(), structure)  # fmt: skip
    removed = structure.get("removed_layers") or []
    if removed:  # whole layers went: the taps move to the layers left, the removed ones' pairs go
        family.adopt(student)
        pairs, mapping = _after_removal(pairs, mapping, removed, student)
        distil = _step(_loss_configs(config, pairs, config.hidden_weight), student, teacher, sample, ctx.engine)
        log.info("prune: removed layers %s; student layers -> teacher layers %s", removed, dict(enumerate(mapping)))
    tuned = train(student, distil.step, data.train, data.dev, config.finetune, session=ctx.session(),
                  extra=distil.extra, label="prune (finetune)")  # fmt: skip
    art = save_model_artifact(student, config.output, ctx, "prune", parent, data, config.eval_batch_size, tuned)
    info = art.info["pruning"] = {
        "method": config.method, "target": config.target.model_dump(), "kept_fraction": kept,
        "target_error": kept - groups.target, "structure": structure, "params_before": before,
        "teacher": config.teacher,
        "masked_training": {"steps": masked.steps, "history": masked.history, "seconds": round(masked.seconds, 2)},
    }  # fmt: skip
    if checks:
        info |= {"latency_checks": checks, "corrections": phase.corrections}
    if mapping:
        info["layer_map"] = mapping
    if latency is None or not _latency_verdict(info, latency, kept, checks, len(phase.corrections), config.output):
        _target_check(info, kept, groups.target, config.output)
    return {config.output: art}


def _keep_unpruned(config: DphubertConfig, student: TaskModel, ctx: Context, parent: str,
                   latency: _Latency) -> Artifacts:  # fmt: skip
    """The source already measures within the latency limit (`target.if_met: keep`): saved as it is."""
    ms = latency.costs.full_ms
    log.info("prune: %s already measures %.3f ms <= %.3f ms on %s; kept unpruned (target.if_met: keep)",
             config.source, ms, latency.limit_ms, config.target.device)  # fmt: skip
    data = ctx.data()
    art = save_model_artifact(student, config.output, ctx, "prune", parent, data, config.eval_batch_size)
    art.info["pruning"] = {"method": config.method, "target": config.target.model_dump(), "kept_fraction": 1.0,
                           "already_met_ms": ms, "limit_ms": latency.limit_ms,
                           "reference_ms": latency.costs.reference_ms,
                           "params_before": student.num_params()}  # fmt: skip
    return {config.output: art}


def _latency_verdict(info: dict[str, Any], latency: _Latency, kept: float, checks: list[dict[str, Any]],
                     corrections: int, output: str) -> bool:  # fmt: skip
    """Record the cost model's prediction for the pruned model (for the profile stage's measurement to check)
    and, when the closed loop measured it, whether the measured graph met the limit. Returns whether a measured
    check decided the verdict (else the size target does)."""
    from compress.pruning.latency_costs import predicted_ms

    lat = latency.costs
    predicted = predicted_ms(lat, kept)
    info["latency_model"] = {"full_ms": lat.full_ms, "fixed_ms": lat.fixed_ms, "limit_ms": latency.limit_ms,
                             "reference_ms": lat.reference_ms, "predicted_ms": predicted,
                             "per_head_ms": lat.costs.per_head, "per_unit_ms": lat.costs.per_unit,
                             "per_layer_ms": lat.costs.per_layer}  # fmt: skip
    log.info("prune: the cost model predicts %.3f ms for the pruned model (unpruned %.3f ms measured)",
             predicted, lat.full_ms)  # fmt: skip
    kept_check = next((c for c in checks if c["kept_model"]), None)
    if kept_check is None:
        return False
    # the measured graph, not the cost model's size, says whether the target was met
    info["latency_model"]["measured_ms"] = kept_check["measured_ms"]
    if kept_check["measured_ms"] > latency.limit_ms:
        msg = (f"{output}: the pruned graph measures {kept_check['measured_ms']:.3f} ms against the "
               f"{latency.limit_ms} ms target after {corrections} correction(s); more `target.corrections` or a "
               "longer masked phase land closer.")  # fmt: skip
        log.warning("prune: %s", msg)
        info["target_missed"] = msg
    return True


CORRECTION_STEPS = 0.25  # each correction continues the masked phase for this fraction of its steps


class _MaskedPhase:
    """DPHuBERT's masked distillation: the masks (their own optimiser) and the Lagrange multipliers (gradient
    ascent) train with the model towards a size target ramped in from 1; a correction continues it towards
    another target (a quarter of its steps, the target ramped over half)."""

    def __init__(self, config: DphubertConfig, groups: MaskedGroups, distil: _Distil, student: TaskModel,
                 ctx: Context) -> None:  # fmt: skip
        self.config, self.groups, self.distil, self.student, self.ctx = config, groups, distil, student, ctx
        self.data = ctx.data()
        self.lagrangian = Lagrangian()
        self.mask_opt = torch.optim.AdamW(groups.parameters(), lr=config.mask_lr, weight_decay=0.0)
        ramp_steps = max(1, int(config.ramp * total_steps(config, len(self.data.train))))
        # the size target at a step: ramped in from 1; a correction ramps from the last target to its own
        self.state: dict[str, Any] = {"step": 0, "ramp": (1.0, groups.target, ramp_steps)}
        self.corrections: list[dict[str, Any]] = []
        self.steps = 0  # of the first masked phase: a correction's length is a share of it

    def step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self.groups.sample()
        loss, parts = self.distil.step(batch)
        expected = self.groups.expected()
        start, end, steps = self.state["ramp"]
        t = ramped_target(self.state["step"], steps, end, start)
        return loss + self.lagrangian(expected, t), parts | {"expected_size": float(expected.detach()), "target": t}

    def train(self, schedule: TrainSchedule, label: str) -> TrainResult:
        result = train(self.student, self.step, self.data.train, self.data.dev, schedule, session=self.ctx.session(),
                       label=label, extra=self.distil.extra,
                       extra_optimizers=(self.mask_opt, self.lagrangian.optimizer(self.config.lambda_lr)),
                       select_best=False, on_step=lambda n: self.state.update(step=n))  # fmt: skip
        self.steps = self.steps or result.steps
        return result

    def correct(self, new_target: float, attempt: int, expected: float) -> None:
        """Continue towards ``new_target``. The target is in the checkpoint's label: a re-run resumes a correction
        only towards the same target (the costs and the check are measured again, and may call for another)."""
        steps = max(1, round(CORRECTION_STEPS * self.steps))
        self.state.update(step=0, ramp=(self.state["ramp"][1], new_target, steps // 2))
        schedule = self.config.model_copy(update={"max_steps": steps,
                                                  "warmup_steps": min(self.config.warmup_steps, steps // 10)})
        # upwards, the multipliers start again from zero: grown while pushing the size down, they would go on pushing
        # it down for hundreds of steps. Downwards they are kept: from zero they take longer than a correction lasts
        # to build up the pressure again (measured: 474 steps moved the kept fraction from 0.615 to 0.608)
        if new_target > expected:
            with torch.no_grad():
                self.lagrangian.lambdas.zero_()
        more = self.train(schedule, f"prune (masks, correction {attempt} to {new_target:.3f})")
        self.corrections.append({"target": new_target, "steps": more.steps, "history": more.history,
                                 "seconds": round(more.seconds, 2)})  # fmt: skip


def _latency_checks(
    config: DphubertConfig, ctx: Context, groups: MaskedGroups, latency: _Latency, student: TaskModel,
    phase: _MaskedPhase,
) -> list[dict[str, Any]]:  # fmt: skip
    """DPHuBERT's latency target, closed: the cost model is linear in heads, units and layers and is off by 10-20%
    on real pruned shapes (a removed layer saves more than its share; odd widths run slower kernels). So the
    model the masks would make is exported as deployed and timed in turns with the unpruned shape; while it is
    over the limit, or under it by more than ``tolerance``, the masked phase continues towards a target corrected
    by the measured error (`corrected_fraction`). Returns every check."""
    from compress.devices import resolve_device
    from compress.pruning.latency_costs import corrected_fraction, measure_pruned, predicted_ms

    target = config.target
    limit, lat = latency.limit_ms, latency.costs
    device = resolve_device(target.device, ctx.base_dir)
    checks: list[dict[str, Any]] = []
    states: list[tuple[dict[str, torch.Tensor], list[torch.Tensor]]] = []  # model and masks at each check
    for attempt in range(target.corrections + 1):
        made = groups.candidate()
        if made is None:  # the family's pruned graphs are not measured
            return checks
        module, kept = made
        measured: tuple[float, list[float]] | None = None
        if ctx.engine.is_main:
            measured = measure_pruned(module, student.module.config, device, target.sequence,
                                      ctx.cache_dir / "latency", lat, precision=target.precision,
                                      statistic=target.percentile)  # fmt: skip
        ms, ratios = ctx.engine.broadcast_object(measured)
        check = {"kept": kept, "predicted_ms": predicted_ms(lat, kept), "measured_ms": ms,
                 "ratios": [round(r, 4) for r in ratios]}  # fmt: skip
        checks.append(check)
        log.info("prune: the pruned graph measures %.3f ms (the cost model said %.3f ms; limit %s ms)",
                 ms, check["predicted_ms"], limit)  # fmt: skip
        if within_band(ms, limit, target.tolerance) or attempt == target.corrections:
            break
        check["next_target"] = corrected_fraction(lat, kept, ms, limit * (1 - target.tolerance / 2))
        # the Lagrangian drives the masks' expected size, and the deterministic gates keep more or less than it (a
        # layer gate at P = 0.64 counts 64% of the layer and keeps all of it): its target carries the gap over
        expected = float(groups.expected().detach())
        check["expected"] = expected
        check["lagrangian_target"] = min(1.0, max(0.01, check["next_target"] - (kept - expected)))
        log.info("prune: correction %d: the masked phase goes on towards %.3f of the variable latency (kept %.3f, "
                 "expected %.3f; Lagrangian target %.3f)", attempt + 1, check["next_target"], kept, expected,
                 check["lagrangian_target"])  # fmt: skip
        states.append(({k: v.detach().clone() for k, v in student.module.state_dict().items()},
                       [p.detach().clone() for p in groups.parameters()]))  # fmt: skip
        phase.correct(check["lagrangian_target"], attempt + 1, expected)
    _keep_best_check(checks, states, student, groups, limit)
    return checks


def within_band(ms: float, limit: float, tolerance: float) -> bool:
    """Whether a measured pruned graph needs no correction: at most ``limit`` ms, and less than ``tolerance`` (a
    fraction of the limit) under it."""
    return limit * (1 - tolerance) <= ms <= limit


def _keep_best_check(checks: list[dict[str, Any]], states: list[tuple[dict[str, torch.Tensor], list[torch.Tensor]]],
                     student: TaskModel, groups: MaskedGroups, limit: float) -> None:  # fmt: skip
    """A correction can overshoot: the model kept is the checked one that measures within the limit and closest to
    it (else the fastest), restored with its masks when it is an earlier one."""
    within = [i for i, c in enumerate(checks) if c["measured_ms"] <= limit]
    best = max(within, key=lambda i: checks[i]["measured_ms"]) if within else min(
        range(len(checks)), key=lambda i: checks[i]["measured_ms"])  # fmt: skip
    for i, c in enumerate(checks):
        c["kept_model"] = i == best
    if best < len(checks) - 1:
        weights, masks = states[best]
        student.module.load_state_dict(weights)
        with torch.no_grad():
            for p, value in zip(groups.parameters(), masks, strict=True):
                p.copy_(value)
        log.info("prune: keeping the model of check %d (%.3f ms), not the last one (%.3f ms)", best + 1,
                 checks[best]["measured_ms"], checks[-1]["measured_ms"])  # fmt: skip


def _after_removal(
    pairs: list[tuple[str, str]], mapping: list[int], removed: list[int], student: TaskModel
) -> tuple[list[tuple[str, str]], list[int]]:
    """Hidden-state pairs and layer map once layers ``removed`` (old indices) are gone from the student."""
    kept = [i for i in range(len(mapping)) if i not in set(removed)]
    new_mapping = [mapping[i] for i in kept]
    old_index = {f: i for i, f in enumerate(_old_features(student.features, removed))}
    new_pairs = [(student.features[kept.index(old_index[s])], t) for s, t in pairs
                 if s in old_index and old_index[s] in kept]  # fmt: skip
    return new_pairs, new_mapping


def _old_features(features: list[str], removed: list[int]) -> list[str]:
    """The feature paths before removal (``<prefix>.<i>``), from the ones after it."""
    if not features:
        return []
    prefix = features[0].rsplit(".", 1)[0]
    return [f"{prefix}.{i}" for i in range(len(features) + len(removed))]


def config_unit(config: _PruneBase) -> str:
    target = config.target
    return "parameters" if target.params is not None else "FLOPs" if target.flops is not None else "ms"


def _run_torch_pruning(
    config: TorchPruningConfig, teacher: TaskModel, student: TaskModel, ctx: Context, parent: str
) -> Artifacts:
    from compress.pruning.channels import TRANSFORM, prune_channels, pruned_shapes

    family = family_of(student)
    channels = family.method(PRUNE_TORCH_PRUNING, "prune", student, "Prune it with `method: dphubert`.")
    if config.target.params is None and config.target.flops is None:
        raise StageError("prune.target: torch_pruning takes a `params` or `flops` target.")
    data = ctx.data()
    teacher.module.eval().requires_grad_(False)
    torch.manual_seed(ctx.seed)
    example = channels.example_input(data)
    reference = channels.reference(student)
    measure: Literal["flops", "params"] = "flops" if config.target.flops is not None else "params"
    keep = float(config.target.flops if config.target.flops is not None else config.target.params)  # type: ignore[arg-type]
    sample = next(iter(data.train.loader(min(8, len(data.train)))))
    step = _step(_loss_configs(config), student, teacher, sample).step

    batches: Iterator[Batch] = iter(())

    def recover(_i: int) -> None:
        nonlocal batches
        opt = adamw(student.module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        student.module.train()
        for _ in range(config.recovery_steps):
            batch: Batch | None = next(batches, None)
            if batch is None:
                batches = iter(data.train.loader(config.batch_size, shuffle=True, seed=ctx.seed + _i))
                batch = next(batches)
            loss, _ = step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        student.module.eval()

    before = student.num_params()
    pruning = prune_channels(
        student.module, example, keep=keep, measure=measure, importance=config.importance, between_steps=recover
    )
    student.record(TRANSFORM, pruned_shapes(student.module, reference))
    log.info("prune: torch_pruning kept %.4f of the %s (target %.3f); %d -> %d parameters in %d steps",
             pruning["fraction"], measure, keep, before, student.num_params(), len(pruning["history"]))  # fmt: skip
    step = _step(_loss_configs(config), student, teacher, sample, ctx.engine).step  # recovery ran on the CPU
    tuned = train(student, step, data.train, data.dev, config, session=ctx.session(), label="prune (distill)")
    art = save_model_artifact(student, config.output, ctx, "prune", parent, data, config.eval_batch_size, tuned)
    art.info["pruning"] = {
        "method": config.method, "target": config.target.model_dump(), "kept_fraction": pruning["fraction"],
        "target_error": pruning["fraction"] - keep, "params_before": before, "importance": config.importance,
        "steps": pruning["history"], "base_macs": pruning["base_macs"],
    }  # fmt: skip
    _target_check(art.info["pruning"], pruning["fraction"], keep, config.output)
    return {config.output: art}
