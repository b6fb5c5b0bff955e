"""`prune`: joint distillation and structured pruning (DPHuBERT) of a Transformer encoder.

Peng et al., 2023, "DPHuBERT: Joint Distillation and Pruning of Self-Supervised Speech Models". The student
starts as a copy of the teacher; hard-concrete masks on heads, attention blocks, FFN units and FFN blocks
train with layer-to-layer distillation (L1 + cosine on hidden states) plus logit KD and the Lagrangian size
term (multipliers by gradient ascent, target ramped in); then the masks become deterministic, masked groups
are removed for real, and distillation continues briefly without masks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compress.artifacts import Artifacts
from compress.config import ArtifactName, Strict, TrainSchedule
from compress.context import Context
from compress.data.dataset import Batch
from compress.errors import StageError
from compress.losses.functional import kd_loss, l1_cosine_loss
from compress.models.structure import current_structure, encoder_layers
from compress.models.task_model import TaskModel
from compress.pruning.encoder_masks import EncoderMasks, GroupCosts, flop_costs, param_costs
from compress.pruning.lagrangian import Lagrangian, ramped_target
from compress.pruning.physical import prune_encoder
from compress.stages.base import StageConfig, register_stage, require, save_model_artifact
from compress.training.loop import train

log = logging.getLogger("compress")


class PruneTarget(Strict):
    """What remains after pruning, as a fraction of the prunable encoder (heads and FFN units). Give one."""

    params: float | None = Field(None, gt=0, lt=1, description="Fraction of prunable encoder parameters to keep.")
    flops: float | None = Field(None, gt=0, lt=1, description="Fraction of prunable encoder FLOPs to keep.")
    latency_ms: float | None = Field(
        None, gt=0, description="p50 latency in ms on `device` (batch 1, `sequence` tokens) to land on (DPHuBERT)."
    )
    device: str = Field("x86-cpu", description="Device profile that `latency_ms` is measured on.")
    sequence: int = Field(
        128,
        gt=0,
        description="Sequence length at which `flops` and `latency_ms` are counted (default: `deploy.sequence`, "
        "else 128).",
    )

    @model_validator(mode="after")
    def _one(self) -> PruneTarget:
        if sum(v is not None for v in (self.params, self.flops, self.latency_ms)) != 1:
            raise ValueError("give exactly one of params, flops, latency_ms")
        return self


class Finetune(TrainSchedule):
    """Distillation after the masked groups are removed (no masks)."""

    epochs: float = Field(0.5, gt=0, description="Passes over the training split.")


class PruneConfig(StageConfig, TrainSchedule):
    """Learn which heads, FFN units and blocks to remove while distilling; remove them; distil briefly."""

    stage: Literal["prune"]
    method: Literal["dphubert", "torch_pruning"] = Field(
        "dphubert",
        description="`dphubert`: joint distillation and structured pruning of Transformer encoders (the target "
        "is a fraction of the prunable encoder). `torch_pruning`: dependency-graph channel pruning of CNNs, "
        "step by step with recovery distillation in between, then the stage's schedule distils the pruned "
        "model (the target is a fraction of the whole model's MACs or parameters).",
    )
    importance: Literal["magnitude", "taylor", "bn_scale"] = Field(
        "magnitude", description="torch_pruning: channel importance (group L2 magnitude, Taylor, BN scale)."
    )
    recovery_steps: int = Field(
        20, ge=0, description="torch_pruning: distillation steps after each pruning step (a few % per step)."
    )
    ce_weight: float = Field(0.0, ge=0, description="Weight of cross-entropy with the labels (CNNs).")
    source: str = Field("teacher", description="Artifact to prune (the student starts as a copy of it).")
    teacher: str = Field(
        "teacher",
        description="Artifact the pruned model distils from. `teacher` by default; name the `source` itself (e.g. "
        "`student`) to prune a distilled or searched student against its unpruned self, as DPHuBERT does.",
    )
    layer_map: list[int] | None = Field(
        None,
        description="dphubert: the teacher layer (0-based) whose hidden states each student layer matches. Default: "
        "the same layer when both have as many layers; else the teacher layers the student was initialised from "
        "(`bert.init_from_layers`, or the evenly spaced layers `search` and `bert` students are sliced from).",
    )
    target: PruneTarget = Field(..., description="Size to land on.")
    ramp: float = Field(0.5, gt=0, le=1, description="Fraction of the masked steps over which the target ramps in.")
    mask_lr: float = Field(0.02, gt=0, description="Learning rate of the mask parameters (log alpha).")
    lambda_lr: float = Field(0.02, gt=0, description="Learning rate of the Lagrange multipliers (gradient ascent).")
    hidden_weight: float = Field(1.0, ge=0, description="Weight of the L1 + cosine hidden-state loss.")
    kd_weight: float = Field(1.0, ge=0, description="Weight of logit KD.")
    temperature: float = Field(2.0, gt=0, description="KD temperature.")
    layers: list[int] | None = Field(
        None, description="Encoder layers (0-based) distilled layer-to-layer (default: all)."
    )
    finetune: Finetune = Field(default_factory=Finetune)  # type: ignore[arg-type]
    output: ArtifactName = Field("student", description="Name of the produced model artifact.")


def _layer_map(config: PruneConfig, student: TaskModel, teacher: TaskModel) -> list[int]:
    """Teacher layer per student layer for the hidden-state loss (see `layer_map`)."""
    from compress.models.bert import default_layer_map

    s_layers, t_layers = len(encoder_layers(student.module)), len(encoder_layers(teacher.module))
    if config.layer_map is not None:
        mapping = config.layer_map
        if len(mapping) != s_layers or not all(0 <= t < t_layers for t in mapping):
            raise StageError(
                f"prune.layer_map: {mapping} must give one teacher layer in 0..{t_layers - 1} for each of the "
                f"{s_layers} layers of {config.source!r}."
            )
        return mapping
    if s_layers == t_layers:
        return list(range(s_layers))
    init = (student.spec.get("bert") or {}).get("init_from_layers")
    return list(init) if init and len(init) == s_layers else default_layer_map(s_layers, t_layers)


def _hidden(model: TaskModel, batch: Batch, layers: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model.module(  # type: ignore[operator]
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    return out.logits, [out.hidden_states[i + 1] for i in layers]


def _distill_loss(  # noqa: ANN202
    config: PruneConfig, student: TaskModel, teacher: TaskModel, batch: Batch, layers: list[int], mapping: list[int]
):
    s_logits, s_hidden = _hidden(student, batch, layers)
    with torch.no_grad():
        t_logits, t_hidden = _hidden(teacher, batch, [mapping[i] for i in layers])
    hidden = (
        l1_cosine_loss(s_hidden, t_hidden, mask=batch["attention_mask"])
        if config.hidden_weight > 0
        else s_logits.new_zeros(())
    )
    kd = kd_loss(s_logits, t_logits, temperature=config.temperature)
    return config.hidden_weight * hidden + config.kd_weight * kd, {
        "hidden": float(hidden.detach()),
        "kd": float(kd.detach()),
    }


def _costs(config: PruneConfig, model: TaskModel, ctx: Context) -> tuple[GroupCosts, float]:
    cfg: Any = model.module.config
    if config.target.params is not None:
        return param_costs(cfg), config.target.params
    if config.target.latency_ms is not None:
        from compress.devices import resolve_device
        from compress.pruning.latency_costs import latency_fraction, measure_costs

        device = resolve_device(config.target.device, ctx.base_dir)
        lat = measure_costs(cfg, device, config.target.sequence, ctx.cache_dir / "latency")
        log.info("prune: on %s, %.4f ms per head, %.5f ms per FFN unit, %.3f ms fixed (full %.3f ms)",
                 device.name, lat.costs.per_head, lat.costs.per_unit, lat.fixed_ms, lat.full_ms)  # fmt: skip
        return lat.costs, latency_fraction(lat, config.target.latency_ms)
    assert config.target.flops is not None
    return flop_costs(cfg, config.target.sequence), config.target.flops


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


@register_stage("prune", PruneConfig)
def run(artifacts: Artifacts, config: PruneConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    require(artifacts, config.teacher, "prune")
    require(artifacts, config.source, "prune")
    teacher = ctx.load_model(artifacts[config.teacher])
    student = ctx.load_model(artifacts[config.source])
    # lineage: what the pruned model came from (the source's own parent when the output replaces the source)
    parent = (artifacts[config.source].parent or config.teacher) if config.output == config.source else config.source
    if config.method == "torch_pruning":
        return _run_channels(config, teacher, student, ctx, parent)
    if student.family == "cnn":
        return _run_cnn_masks(config, teacher, student, ctx, parent)
    if student.family != "hf" or student.modality != "text":
        raise StageError(
            f"prune.method: dphubert prunes Hugging Face text encoders and built-in CNNs; {config.source!r} is a "
            f"{student.family} model. Use `method: torch_pruning` for CNNs."
        )
    return _run_dphubert(config, teacher, student, ctx, parent)


def _logit_loss(config: PruneConfig, student: TaskModel, teacher: TaskModel, batch: Batch):  # noqa: ANN202
    s = student.logits(batch)
    with torch.no_grad():
        t = teacher.logits(batch)
    kd = kd_loss(s, t, temperature=config.temperature)
    loss = config.kd_weight * kd
    if config.ce_weight:
        loss = loss + config.ce_weight * torch.nn.functional.cross_entropy(s, batch["labels"])
    return loss, {"kd": float(kd.detach())}


def _run_cnn_masks(config: PruneConfig, teacher: TaskModel, student: TaskModel, ctx: Context, parent: str) -> Artifacts:
    """DPHuBERT's masks and Lagrangian on the channels of a built-in CNN (logit KD: no layer-to-layer loss)."""
    from compress.models.task_model import build_module
    from compress.pruning.channels import pruned_shapes
    from compress.pruning.cnn_masks import CnnMasks, prune_cnn_channels

    if config.target.params is None:
        raise StageError("prune.target: CNN channel masks take a `params` target; use torch_pruning for `flops`.")
    data = ctx.data()
    teacher.module.eval().requires_grad_(False)
    reference = build_module(student.family, student.spec)
    masks = CnnMasks(student.module).attach()
    full, target = masks.full_size(), config.target.params
    lagrangian = Lagrangian()
    from compress.training.loop import total_steps

    ramp_steps = max(1, int(config.ramp * total_steps(config, len(data.train))))
    state = {"step": 0}

    def masked_step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        masks.sample()
        loss, parts = _logit_loss(config, student, teacher, batch)
        expected = masks.expected_size() / full
        t = ramped_target(state["step"], ramp_steps, target)
        state["step"] += 1
        return loss + lagrangian(expected, t), parts | {"expected_size": float(expected.detach()), "target": t}

    mask_opt = torch.optim.AdamW(masks.parameters(), lr=config.mask_lr, weight_decay=0.0)
    masked = train(
        student, masked_step, data.train, data.dev, config, seed=ctx.seed, label="prune (masks)",
        extra_optimizers=(mask_opt, lagrangian.optimizer(config.lambda_lr)), select_best=False,
    )  # fmt: skip
    before = student.num_params()
    example = torch.as_tensor(data.train.features[:1]).float()
    kept_channels = prune_cnn_channels(student.module, masks, example)
    kept = sum(k * g.per_channel for k, g in zip(kept_channels, masks.groups, strict=True)) / full
    student.spec = {**student.spec, "pruned_shapes": pruned_shapes(student.module, reference)}
    log.info("prune: kept %.4f of the maskable channels' parameters (target %.3f); %d -> %d parameters",
             kept, target, before, student.num_params())  # fmt: skip

    def plain_step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return _logit_loss(config, student, teacher, batch)

    tuned = train(student, plain_step, data.train, data.dev, config.finetune, seed=ctx.seed, label="prune (finetune)")
    art = save_model_artifact(student, config.output, ctx, "prune", parent, data, config.eval_batch_size, tuned)
    art.info["pruning"] = {
        "method": config.method, "target": config.target.model_dump(), "kept_fraction": kept,
        "target_error": kept - target, "params_before": before,
        "structure": {g.name: k for g, k in zip(masks.groups, kept_channels, strict=True)},
        "masked_training": {"steps": masked.steps, "history": masked.history, "seconds": round(masked.seconds, 2)},
    }  # fmt: skip
    _target_check(art.info["pruning"], kept, target, config.output)
    return {config.output: art}


def _run_channels(config: PruneConfig, teacher: TaskModel, student: TaskModel, ctx: Context, parent: str) -> Artifacts:
    from compress.models.task_model import build_module
    from compress.pruning.channels import prune_channels, pruned_shapes

    if student.family not in ("cnn", "python") or student.modality != "image":
        raise StageError("prune.method: torch_pruning prunes image CNNs; use `method: dphubert` for Transformers.")
    if config.target.params is None and config.target.flops is None:
        raise StageError("prune.target: torch_pruning takes a `params` or `flops` target.")
    data = ctx.data()
    teacher.module.eval().requires_grad_(False)
    torch.manual_seed(ctx.seed)
    example = torch.as_tensor(data.train.features[:1]).float()
    reference = build_module(student.family, student.spec)
    measure: Literal["flops", "params"] = "flops" if config.target.flops is not None else "params"
    keep = float(config.target.flops if config.target.flops is not None else config.target.params)  # type: ignore[arg-type]

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return _logit_loss(config, student, teacher, batch)

    batches: Iterator[Batch] = iter(())

    def recover(_i: int) -> None:
        nonlocal batches
        opt = torch.optim.AdamW(student.module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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
    student.spec = {**student.spec, "pruned_shapes": pruned_shapes(student.module, reference)}
    log.info("prune: torch_pruning kept %.4f of the %s (target %.3f); %d -> %d parameters in %d steps",
             pruning["fraction"], measure, keep, before, student.num_params(), len(pruning["history"]))  # fmt: skip
    tuned = train(student, step, data.train, data.dev, config, seed=ctx.seed, label="prune (distill)")
    art = save_model_artifact(student, config.output, ctx, "prune", parent, data, config.eval_batch_size, tuned)
    art.info["pruning"] = {
        "method": config.method, "target": config.target.model_dump(), "kept_fraction": pruning["fraction"],
        "target_error": pruning["fraction"] - keep, "params_before": before, "importance": config.importance,
        "steps": pruning["history"], "base_macs": pruning["base_macs"],
    }  # fmt: skip
    _target_check(art.info["pruning"], pruning["fraction"], keep, config.output)
    return {config.output: art}


def _run_dphubert(config: PruneConfig, teacher: TaskModel, student: TaskModel, ctx: Context, parent: str) -> Artifacts:
    n_layers = len(encoder_layers(student.module))
    layers = config.layers or list(range(n_layers))
    if any(not 0 <= i < n_layers for i in layers):
        raise StageError(f"prune.layers: {layers} must be in 0..{n_layers - 1}.")
    mapping = _layer_map(config, student, teacher)
    s_width, t_width = student.module.config.hidden_size, teacher.module.config.hidden_size  # type: ignore[union-attr]
    if s_width != t_width and config.hidden_weight > 0:
        raise StageError(
            f"prune: {config.source!r} (hidden size {s_width}) and its teacher {config.teacher!r} (hidden size "
            f"{t_width}) cannot match hidden states. Set `teacher: {config.source}` (distil from the unpruned model "
            "itself) or `hidden_weight: 0` (logit distillation only)."
        )
    log.info("prune: student layers -> teacher layers %s", dict(enumerate(mapping)))
    data = ctx.data()
    teacher.module.eval().requires_grad_(False)
    masks = EncoderMasks(student.module).attach(student.module)
    costs, target = _costs(config, student, ctx)
    full = masks.full_size(costs)
    lagrangian = Lagrangian()
    from compress.training.loop import total_steps

    steps = total_steps(config, len(data.train))
    ramp_steps = max(1, int(config.ramp * steps))
    state = {"step": 0}

    def masked_step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        masks.sample()
        loss, parts = _distill_loss(config, student, teacher, batch, layers, mapping)
        expected = masks.expected_size(costs) / full
        t = ramped_target(state["step"], ramp_steps, target)
        state["step"] += 1
        penalty = lagrangian(expected, t)
        return loss + penalty, parts | {"expected_size": float(expected.detach()), "target": t}

    mask_opt = torch.optim.AdamW(masks.parameters(), lr=config.mask_lr, weight_decay=0.0)
    log.info("prune: %s target %.3f of %s prunable %s", config.method, target, f"{full:,.0f}",
             "parameters" if config.target.params else "FLOPs" if config.target.flops else "ms")  # fmt: skip
    masked = train(
        student, masked_step, data.train, data.dev, config, seed=ctx.seed, label="prune (masks)",
        extra_optimizers=(mask_opt, lagrangian.optimizer(config.lambda_lr)), select_best=False,
    )  # fmt: skip
    gates = masks.deterministic()
    masks.detach()
    before = student.num_params()
    structure = prune_encoder(student.module, gates)
    kept = (sum(structure["heads"]) * costs.per_head + sum(structure["ffn"]) * costs.per_unit) / full
    log.info("prune: kept %.4f of the prunable size (target %.3f); %d -> %d parameters; structure %s",
             kept, target, before, student.num_params(), structure)  # fmt: skip

    def plain_step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return _distill_loss(config, student, teacher, batch, layers, mapping)

    tuned = train(student, plain_step, data.train, data.dev, config.finetune, seed=ctx.seed, label="prune (finetune)")
    art = save_model_artifact(student, config.output, ctx, "prune", parent, data, config.eval_batch_size, tuned)
    art.info["pruning"] = {
        "method": config.method,
        "target": config.target.model_dump(),
        "kept_fraction": kept,
        "target_error": kept - target,
        "structure": current_structure(student.module),
        "params_before": before,
        "teacher": config.teacher,
        "layer_map": mapping,
        "masked_training": {"steps": masked.steps, "history": masked.history, "seconds": round(masked.seconds, 2)},
    }
    _target_check(art.info["pruning"], kept, target, config.output)
    return {config.output: art}
