"""`quantize`: quantization-aware distillation (NNCF fake quantizers trained against the full-precision model,
exported as QDQ that onnxruntime runs with integer kernels) or onnxruntime post-training int8."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from compress.artifacts import Artifact, Artifacts
from compress.config import Strict, TrainSchedule, check_name
from compress.context import Context
from compress.data.dataset import DataBundle
from compress.errors import QuantizationError
from compress.evaluation import ParityConfig, onnx_logits, predictor
from compress.exporters.onnx import MIN_OPSET
from compress.families import family_of
from compress.families.methods import METHODS, QUANTIZE_BITSANDBYTES, QUANTIZE_BUDGET, QUANTIZE_QAT, QatDefaults
from compress.graphs import Job, PtqRequest, QatExport
from compress.losses import LossConfig, build_terms, loss_config_union
from compress.models.task_model import TaskModel
from compress.quant import dynamic_qat, qat
from compress.quant.ptq import INT8_MODES, Int8Mode, PtqOptions
from compress.stages.base import Chain, StageConfig, check_losses, register_stage, require
from compress.training.distillation import distillation_step
from compress.training.evaluate import predict_logits
from compress.training.loop import train

log = logging.getLogger("compress")
Exporter = Callable[..., None]  # (model, sample, path, opset): writes the fp32 ONNX file
if TYPE_CHECKING:
    LossUnion = LossConfig
else:
    LossUnion = loss_config_union()

# Embedding tables keep float weights: a QDQ embedding makes onnxruntime dequantize the whole table on every
# call (measured on the SST-2 3-layer student: 10.8 ms of DequantizeLinear per inference, slower than fp32).
IGNORED_TYPES = ["embedding"]


class WeightQuant(Strict):
    """How weights are quantized."""

    bits: int = Field(
        8,
        description="Weight bit width: 8 (W8A8 QDQ, onnxruntime's integer MatMul/Conv kernels) or 4 (`qat` only: "
        "weight-only symmetric int4, exported as onnxruntime MatMulNBits; Linear layers only, Convs stay float). "
        "With `qat`: one trained scale per output channel, artifact `<source>.int4-qat.onnx`; with `ptq`: "
        "onnxruntime's round-to-nearest, one scale per 128 input channels, artifact `<source>.int4-rtn.onnx` "
        "(causal LMs: one scale per 32 input channels on the KV-cache graph, `<source>.int4.onnx`).",
    )
    per_channel: bool = Field(True, description="One scale per output channel (else one per tensor; 8 bits only).")

    @field_validator("bits")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v not in qat.WEIGHT_BITS:
            raise ValueError(f"must be one of {list(qat.WEIGHT_BITS)}")
        return v


class ActivationQuant(Strict):
    """How activations (the inputs of every quantized MatMul / Conv) are quantized."""

    bits: int = Field(8, description="Activation bit width (8).")
    ranges: Literal["trained", "dynamic"] = Field(
        "trained",
        description="`trained`: NNCF fake quantizers learn static ranges, exported as QDQ. `dynamic`: ranges are "
        "taken per input at run time, as onnxruntime's dynamic int8 does; training emulates exactly its rounding "
        "(one int8 scale per weight tensor, Q/K/V sharing theirs as the fused attention does; uint8 inputs), and "
        "the artifact `<source>.int8-qat-dynamic.onnx` is deployed through the same fused dynamic-int8 path as "
        "`int8: [dynamic]`, so it runs as fast (encoders and user models; `weights.per_channel` does not apply).",
    )

    @field_validator("bits")
    @classmethod
    def _supported(cls, v: int) -> int:
        if v not in qat.ACTIVATION_BITS:
            raise ValueError(f"must be one of {list(qat.ACTIVATION_BITS)} (what onnxruntime's integer kernels take)")
        return v


def _qat_parity() -> ParityConfig:
    return ParityConfig(samples=128, max_abs_diff=0.1, min_top1_agreement=0.98)


class _QuantizeBase(StageConfig):
    stage: Literal["quantize"]
    source: str = Field("student", description="Model artifact to quantize.")
    weights: WeightQuant = Field(default_factory=WeightQuant, description="Weight quantization.")  # type: ignore[arg-type]
    eval_batch_size: int = Field(64, gt=0, description="Batch size for accuracy and teacher inference.")

    def methods(self) -> list[str]:
        """The quantization methods this config runs (capabilities `quantize:<method>` of the family)."""
        return [getattr(self, "method", "")]

    def check(self, chain: Chain) -> list[str]:
        missing = [m for m in self.methods() if not chain.supports(f"quantize:{m}")]
        if missing:
            words = ", ".join(METHODS[f"quantize:{m}"].words for m in missing)
            return [f"{chain.key}.method: {getattr(self, 'method', '')} does not apply to {chain.member} yet "
                    f"({words}: not for this family)."]  # fmt: skip
        return []


class QatConfig(_QuantizeBase, TrainSchedule):
    """Quantization-aware distillation: NNCF fake quantizers on weights and activations trained by distillation
    from the full-precision model, exported as integer QDQ ONNX (int8) or MatMulNBits (4-bit weights)."""

    method: Literal["qat"] = Field(
        "qat",
        description="`qat` (the default: quantization-aware distillation), `ptq` (onnxruntime post-training) or "
        "`bitsandbytes` (a GPU deployment target: the Hugging Face model saved with bitsandbytes weights). Each "
        "method takes only its own keys.",
    )
    teacher: str | None = Field(
        None,
        description="Model artifact the quantized model is distilled from. Default: the full-precision `source` "
        "itself (the paper's setting).",
    )
    activations: ActivationQuant | None = Field(
        None,
        description="Activation quantization. Default: 8 bits with 8-bit weights; leave it out with 4-bit weights "
        "(weight-only: activations stay float, MatMulNBits quantizes them per block on the fly).",
    )
    losses: list[LossUnion] | None = Field(
        None,
        description="Distillation terms, by `name`. Default: the model family's (Transformer encoders: kd + "
        "attention_map + attention_output, weights 1; others: kd + ce 0.5).",
    )
    calibration_samples: int = Field(256, gt=0, description="Training examples that initialise the quantizers.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate of AdamW (QAT starts from a trained model).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split (fractions allowed).")
    eval_batch_size: int = Field(64, gt=0, description="Batch size for accuracy and teacher inference.")
    opset: int = Field(MIN_OPSET, ge=MIN_OPSET, le=23, description="ONNX opset.")
    output: str | None = Field(
        None,
        description="Name of the artifact (an .onnx file name). Default: `<source>.int8-qat.onnx` "
        "(`<source>.int4-qat.onnx` with 4-bit weights).",
    )
    parity: ParityConfig = Field(
        default_factory=_qat_parity,
        description="Thresholds of the fake-quantized PyTorch model against the integer ONNX artifact (integer "
        "kernels round differently from float fake quantization, so these are looser than export's).",
    )

    @field_validator("output")
    @classmethod
    def _onnx_name(cls, v: str | None) -> str | None:
        if v is not None and (not v.endswith(".onnx") or "/" in v):
            raise ValueError("must be a file name ending in .onnx (e.g. student.int8-qat.onnx)")
        return v if v is None else check_name(v)

    @model_validator(mode="after")
    def _scheme(self) -> QatConfig:
        if self.weights.bits == 4:
            if self.activations is not None:
                raise ValueError(
                    "activations: 4-bit weights are weight-only (activations stay float); remove `activations`"
                )
            if not self.weights.per_channel:
                raise ValueError(
                    "weights.per_channel: 4-bit weights take one scale per output channel (NNCF's trainable 4-bit "
                    "format on PyTorch has no per-tensor or group-wise form)"
                )
        elif self.activations is None:
            self.activations = ActivationQuant()  # type: ignore[call-arg]
            self.__pydantic_fields_set__.discard("activations")  # a default, not the recipe's choice
        return self

    @property
    def weight_only(self) -> bool:
        return self.weights.bits == 4

    @property
    def dynamic(self) -> bool:
        return self.activations is not None and self.activations.ranges == "dynamic"

    def trains(self) -> bool:
        return True

    def check(self, chain: Chain) -> list[str]:
        problems = super().check(chain) + check_losses(self.losses, chain, f"{chain.key}.losses")
        defaults = chain.implementation(QUANTIZE_QAT)
        if problems or defaults is None:
            return problems
        try:
            config = _family_scheme(self, defaults, chain.key)
        except QuantizationError as exc:
            return [str(exc)]
        graph, _ = chain.graph([self.source])
        return chain.refusal(
            lambda: graph.check_qat(weight_bits=config.weights.bits, dynamic=config.dynamic, stage=chain.key))


class PtqConfig(_QuantizeBase, PtqOptions):
    """onnxruntime post-training quantization of the exported fp32 model: the `int8` variants, or 4-bit
    round-to-nearest weights (`weights.bits: 4`)."""

    method: Literal["ptq"] = Field(..., description="`ptq`.")
    int8: list[Int8Mode] = Field(
        default_factory=lambda: list(INT8_MODES), description="onnxruntime int8 variants made."
    )
    opset: int = Field(MIN_OPSET, ge=MIN_OPSET, le=23, description="ONNX opset.")

    @model_validator(mode="after")
    def _scheme(self) -> PtqConfig:
        if self.weights.bits == 4 and "int8" in self.model_fields_set:
            raise ValueError("int8: with weights.bits 4, ptq makes one 4-bit artifact; remove `int8`")
        return self

    @property
    def weight_only(self) -> bool:
        return self.weights.bits == 4

    def check(self, chain: Chain) -> list[str]:
        problems = super().check(chain)
        if problems or self.weight_only:
            return problems
        graph, _ = chain.graph([self.source])
        return chain.refusal(lambda: graph.int8_modes(self.int8, explicit="int8" in self.model_fields_set,
                                                      stage=chain.key, model=self.source))  # fmt: skip


class BitsandbytesConfig(_QuantizeBase):
    """A GPU deployment target: the Hugging Face model saved with bitsandbytes weights (LLM.int8 for
    `weights.bits: 8`, NF4 for 4), artifact `<source>.bnb-int8` / `<source>.bnb-nf4`, a PyTorch folder that
    `from_pretrained` reloads quantized."""

    method: Literal["bitsandbytes"] = Field(..., description="`bitsandbytes`.")

    def check(self, chain: Chain) -> list[str]:
        if chain.supports("quantize:bitsandbytes"):
            return []
        return [f"{chain.key}.method: bitsandbytes deployment covers Hugging Face models; {chain.member} is not one. "
                "Use qat or ptq."]  # fmt: skip


BudgetCandidate = Literal["dynamic", "qat_dynamic", "static", "qat"]
BUDGET_ORDER: tuple[BudgetCandidate, ...] = ("dynamic", "qat_dynamic", "static", "qat")


class BudgetQuantConfig(_QuantizeBase, PtqOptions):
    """The method the accuracy budget allows: each candidate in `order` is made and measured on the dev split
    (on onnxruntime), and the first that keeps dev accuracy within `accuracy_drop` points of the teacher's wins;
    when none does, the most accurate is kept and the miss recorded. Only the chosen artifact is kept."""

    method: Literal["budget"] = Field(..., description="`budget`.")
    accuracy_drop: float = Field(
        ...,
        ge=0,
        description="Most dev-accuracy points below the teacher (filled from the recipe budget's `accuracy_drop` "
        "when the stage leaves it out).",
    )
    order: list[BudgetCandidate] = Field(
        default_factory=lambda: list(BUDGET_ORDER),
        min_length=1,
        description="Candidates, fastest first: onnxruntime dynamic int8 (fused); QAT-KD trained for that same "
        "graph (`activations.ranges: dynamic`: as fast, only its weights trained); static int8 QDQ; QAT-KD with "
        "trained ranges (QDQ). A trained candidate is only made when the ones before it miss. Put `static` first "
        "for OpenVINO, whose ONNX front end runs QDQ graphs but not onnxruntime's dynamic-int8 operators.",
    )
    qat_epochs: float = Field(0.5, gt=0, description="Passes over the training split of the QAT-KD candidate.")
    opset: int = Field(MIN_OPSET, ge=MIN_OPSET, le=23, description="ONNX opset.")

    def trains(self) -> bool:
        return "qat" in self.order or "qat_dynamic" in self.order

    def methods(self) -> list[str]:
        return ["budget", "ptq"] + (["qat"] if self.trains() else [])


QuantizeConfig = QatConfig | PtqConfig | BitsandbytesConfig | BudgetQuantConfig


def _calibration(data: DataBundle, model: TaskModel, n: int) -> list[dict[str, torch.Tensor]]:
    return [model.inputs(b) for b in data.train.subset(n).loader(16)]


def _job(ctx: Context, artifacts: Artifacts, source: str) -> Job:
    """The stage's job for a graph: the recipe's teacher is the reference of every model but itself."""
    teacher = (lambda: ctx.load_model(artifacts["teacher"])) if "teacher" in artifacts and source != "teacher" else None
    return Job(ctx.data(), ctx.stage_dir, "quantize", teacher)


def _run_ptq(source: Artifact, model: TaskModel, config: PtqConfig, ctx: Context, artifacts: Artifacts) -> Artifacts:
    graph = family_of(model).graph(model)
    modes = config.int8 if config.weight_only else graph.int8_modes(
        config.int8, explicit="int8" in config.model_fields_set, stage="quantize", model=config.source)  # fmt: skip
    req = PtqRequest(config.opset, modes, config, config.weights.bits, config.eval_batch_size)
    return {a.name: a for a in graph.ptq(model, source, _job(ctx, artifacts, config.source), req)}


def _run_bnb(source: Artifact, config: BitsandbytesConfig, ctx: Context) -> Artifacts:
    """Reload the source's Hugging Face folder with bitsandbytes (one probe forward on this machine's device),
    save it as a new model artifact, measure its accuracy with PyTorch."""
    from compress.models import bnb

    model = ctx.load_model(source)
    where = f"quantize.source {config.source!r}"
    family_of(model).method(QUANTIZE_BITSANDBYTES, where, model, "Quantize it with qat or ptq.")(model, where)
    mode: bnb.BnbMode = "int8" if config.weights.bits == 8 else "nf4"
    module = bnb.load(str(source.path), mode, model.num_labels, key=f"quantize ({config.source}, bitsandbytes {mode})")
    quantized = model.with_module(module)
    name = f"{config.source}.bnb-{mode}"
    folder = ctx.stage_dir / name
    quantized.save(folder)
    data = ctx.data()
    logits = predict_logits(quantized, data.test, config.eval_batch_size, f"evaluating {name}")
    fp32 = predict_logits(model, data.test, config.eval_batch_size, "fp32 logits")
    metrics = {
        "accuracy": float((logits.argmax(-1) == data.test.labels).float().mean()),
        "top1_agreement_with_fp32": float((logits.argmax(-1) == fp32.argmax(-1)).float().mean()),
    }
    log.info("%s: accuracy %.4f (bitsandbytes %s on %s)", name, metrics["accuracy"], mode, bnb.device())
    info = {"method": "bitsandbytes", "bitsandbytes": mode, "device": bnb.device(), "family": model.family}
    art = Artifact(name, "model", folder, "quantize", parent=config.source, precision=f"bnb-{mode}",
                   params=source.params, metrics=metrics, info=info)  # fmt: skip
    return {name: art.finalize()}


def _dev_accuracy(path: Path, data: DataBundle, batch: int, label: str) -> float:
    logits = onnx_logits(predictor("onnxruntime", path), data.dev, batch, label)
    return float((logits.argmax(-1) == data.dev.labels.numpy()).mean())


def budget_choice(tried: list[dict[str, Any]]) -> dict[str, Any]:
    """The candidate `method: budget` keeps: the first that meets the accuracy budget, else the most accurate (the
    first of equals)."""
    return next((t for t in tried if t["meets"]), None) or max(tried, key=lambda t: t["dev_accuracy"])


def _run_budget(
    artifacts: Artifacts, source: Artifact, model: TaskModel, config: BudgetQuantConfig, ctx: Context
) -> Artifacts:
    """Make the candidates in order until one keeps dev accuracy within the budget (see BudgetQuantConfig)."""
    from compress.training.evaluate import metrics as evaluate_metrics

    require(artifacts, "teacher", "quantize")
    family_of(model).method(QUANTIZE_BUDGET, f"quantize.source {config.source!r}", model,
                            "Quantize it with `ptq` or `qat`.")  # fmt: skip
    data = ctx.data()
    teacher = ctx.load_model(artifacts["teacher"])
    teacher_dev = float(evaluate_metrics(teacher, data.dev, config.eval_batch_size)["accuracy"])
    floor = teacher_dev - config.accuracy_drop / 100
    tried: list[dict[str, Any]] = []
    made: dict[str, Artifact] = {}
    for candidate in config.order:
        if candidate in ("qat", "qat_dynamic"):
            ranges = {"activations": ActivationQuant(ranges="dynamic")} if candidate == "qat_dynamic" else {}
            qat_config = QatConfig(stage="quantize", source=config.source, epochs=config.qat_epochs,
                                   eval_batch_size=config.eval_batch_size, opset=config.opset,
                                   **ranges)  # type: ignore[call-arg,arg-type]
            arts = _run_qat(artifacts, source, model, qat_config, ctx)
        else:
            ptq = PtqConfig(stage="quantize", method="ptq", source=config.source, int8=[candidate],
                            **config.model_dump(include=set(PtqOptions.model_fields)))  # fmt: skip
            arts = _run_ptq(source, model, ptq, ctx, artifacts)
        (art,) = arts.values()
        dev = _dev_accuracy(art.path, data, config.eval_batch_size, f"{art.name} dev accuracy")
        tried.append({"method": candidate, "artifact": art.name, "dev_accuracy": dev,
                      "points_vs_teacher": 100 * (dev - teacher_dev), "meets": dev >= floor})  # fmt: skip
        made[art.name] = art
        log.info("quantize (budget): %s: dev accuracy %.4f, %+.2f points vs the teacher (allowed -%g)%s",
                 candidate, dev, 100 * (dev - teacher_dev), config.accuracy_drop,
                 ": chosen" if dev >= floor else "")  # fmt: skip
        if dev >= floor:
            break
    best = budget_choice(tried)
    chosen = made[best["artifact"]]
    for name, art in made.items():
        if name != chosen.name:
            art.path.unlink(missing_ok=True)
    chosen.info["quantize_budget"] = {"teacher_dev_accuracy": teacher_dev, "accuracy_drop": config.accuracy_drop,
                                      "tried": tried, "chosen": best["method"], "met": best["meets"]}  # fmt: skip
    if not best["meets"]:
        log.warning("quantize (budget): no method keeps dev accuracy within %g points of the teacher; kept %s "
                    "(%+.2f points)", config.accuracy_drop, best["method"], best["points_vs_teacher"])  # fmt: skip
    return {chosen.name: chosen}


@register_stage("quantize", QatConfig, PtqConfig, BitsandbytesConfig, BudgetQuantConfig)
def run(artifacts: Artifacts, config: QuantizeConfig, ctx: Context) -> Artifacts:
    require(artifacts, config.source, "quantize")
    source = artifacts[config.source]
    if source.kind != "model":
        raise QuantizationError(
            f"quantize.source {config.source!r} is an ONNX file; give a PyTorch model artifact (e.g. student)."
        )
    if isinstance(config, BitsandbytesConfig):
        return _run_bnb(source, config, ctx)
    model = ctx.load_model(source)
    if isinstance(config, PtqConfig):
        return _run_ptq(source, model, config, ctx, artifacts)
    if isinstance(config, BudgetQuantConfig):
        return _run_budget(artifacts, source, model, config, ctx)
    return _run_qat(artifacts, source, model, config, ctx)


def _run_qat(
    artifacts: Artifacts, source: Artifact, fp32: TaskModel, config: QatConfig, ctx: Context
) -> Artifacts:
    data = ctx.data()
    teacher_name = config.teacher or config.source
    require(artifacts, teacher_name, "quantize")
    # the full-precision source is the default teacher: frozen, so the loaded copy serves as both
    teacher = fp32 if teacher_name == config.source else ctx.load_model(artifacts[teacher_name])
    teacher.module.eval().requires_grad_(False)
    student = ctx.load_model(source)
    family = family_of(student)
    defaults = family.method(QUANTIZE_QAT, "quantize", student)
    config = _family_scheme(config, defaults, "quantize")
    graph = family.graph(student)  # asked before NNCF rewrites the module
    graph.check_qat(weight_bits=config.weights.bits, dynamic=config.dynamic, stage="quantize")
    calibration = _calibration(data, student, config.calibration_samples)
    scheme = qat.QatScheme(
        weight_bits=config.weights.bits,
        activation_bits=config.activations.bits if config.activations else 32,
        per_channel=config.weights.per_channel,
        transformer=defaults.transformer(student),
    )
    losses = config.losses or defaults.losses(student)
    probe = next(iter(data.train.loader(min(8, len(data.train)))))
    # losses are built before quantizers go in: they switch attention to eager, which NNCF must trace
    build_terms(losses, student, teacher, probe)
    if config.dynamic:  # onnxruntime's dynamic int8 emulated: no ranges to calibrate
        quantizers = dynamic_qat.prepare(student.module, family.ptq_scheme(student).shared_scale)
    else:
        student.module = qat.prepare(student.module, calibration, scheme, ignored_types=IGNORED_TYPES)
        quantizers = qat.quantizer_count(student.module)
    if not quantizers:
        raise QuantizationError(f"NNCF found nothing to quantize in {config.source!r} (no MatMul, Linear or Conv).")
    terms = build_terms(losses, student, teacher, probe)
    log.info(
        "quantize (qat): %s %s (%s weights), %d quantizers, teacher %s; losses %s",
        config.source, _describe(config),
        "per-channel" if scheme.per_channel else
        "per-tensor", quantizers, teacher_name, ", ".join(f"{c.name}x{c.weight:g}" for c in losses),
    )  # fmt: skip
    step = distillation_step(student, teacher, terms, [f"loss_{c.name}" for c in losses], engine=ctx.engine)
    result = train(
        student, step, data.train, data.dev, config, session=ctx.session(), extra=torch.nn.ModuleList(terms),
        label="qat",
    )
    precision = f"int{config.weights.bits}-qat" + ("-dynamic" if config.dynamic else "")
    q = QatExport(config.source, source.params, config.output or f"{config.source}.{precision}.onnx", precision,
                  config.weights.bits, config.dynamic, config.opset, config.parity, config.eval_batch_size)  # fmt: skip
    art = graph.write_qat(student, fp32, _job(ctx, artifacts, config.source), q)
    art.info.update({
        "method": "qat",
        "scheme": {
            "weights": config.weights.model_dump(),
            "activations": config.activations.model_dump() if config.activations else None,
        },
        "teacher": teacher_name,
        "losses": [c.model_dump() for c in losses],
        "training": {k: getattr(result, k) for k in ("steps", "best_step", "seconds", "first_loss", "last_loss",
                                                      "history", "best_dev", "dev_metric")},
    })  # fmt: skip
    return {art.name: art}


def _family_scheme(config: QatConfig, defaults: QatDefaults, where: str) -> QatConfig:
    """The weight width the family trains (`QatDefaults.weight_width`): its default where the recipe names none
    (4-bit weight-only for causal LMs), a clear error where the recipe names one it does not."""
    named = "weights" in config.model_fields_set or "activations" in config.model_fields_set
    bits = defaults.weight_width(config.weights.bits if named else None, where=f"{where}.weights.bits",
                                 source=config.source)  # fmt: skip
    if not named and bits != config.weights.bits:
        return config.model_copy(update={"weights": WeightQuant(bits=bits), "activations": None})
    return config


def _describe(config: QatConfig) -> str:
    acts = config.activations
    return f"W{config.weights.bits}" + (f"A{acts.bits}" if acts else " weight-only")
