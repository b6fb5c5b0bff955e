"""`quantize`: quantization-aware distillation (NNCF fake quantizers trained against the full-precision model,
exported as QDQ that onnxruntime runs with integer kernels) or onnxruntime post-training int8."""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, field_validator

from compress.artifacts import Artifact, Artifacts
from compress.context import Context
from compress.data.dataset import DataBundle
from compress.errors import QuantizationError
from compress.exporters.onnx import MIN_OPSET, export_onnx
from compress.losses import LossConfig, build_terms, loss_config_union
from compress.losses.terms import CEConfig, KDConfig
from compress.models.task_model import TaskModel
from compress.quant import ort as ortq
from compress.quant import qat, qdq
from compress.recipe.base import Strict, TrainSchedule
from compress.runtimes.onnxruntime import OrtPredictor
from compress.stages.base import StageConfig, register_stage, require
from compress.stages.onnx_common import (
    INT8_MODES,
    Int8Mode,
    ParityConfig,
    PtqOptions,
    check_parity,
    onnx_artifact,
    onnx_logits,
    ptq_artifacts,
)
from compress.training.distillation import distillation_step
from compress.training.evaluate import predict_logits
from compress.training.loop import train

log = logging.getLogger("compress")
if TYPE_CHECKING:
    LossUnion = LossConfig
else:
    LossUnion = loss_config_union()

# Embedding tables keep float weights: a QDQ embedding makes onnxruntime dequantize the whole table on every
# call (measured on the SST-2 3-layer student: 10.8 ms of DequantizeLinear per inference, slower than fp32).
IGNORED_TYPES = ["embedding"]


def _bits(v: int) -> int:
    if v not in qat.SUPPORTED_BITS:
        raise ValueError(
            f"must be one of {list(qat.SUPPORTED_BITS)} (the widths onnxruntime's CPU integer kernels execute)"
        )
    return v


class WeightQuant(Strict):
    """How weights are quantized."""

    bits: int = Field(8, description="Weight bit width (8: onnxruntime's integer MatMul/Conv kernels).")
    per_channel: bool = Field(True, description="One scale per output channel (else one per tensor).")

    @field_validator("bits")
    @classmethod
    def _supported(cls, v: int) -> int:
        return _bits(v)


class ActivationQuant(Strict):
    """How activations (the inputs of every quantized MatMul / Conv) are quantized."""

    bits: int = Field(8, description="Activation bit width (8).")

    @field_validator("bits")
    @classmethod
    def _supported(cls, v: int) -> int:
        return _bits(v)


def _qat_parity() -> ParityConfig:
    return ParityConfig(samples=128, max_abs_diff=0.1, min_top1_agreement=0.98)


class QuantizeConfig(PtqOptions, TrainSchedule, StageConfig):
    """Quantize a model: `qat` trains fake-quantized weights and activations by distillation from the
    full-precision model and exports integer QDQ ONNX; `ptq` is onnxruntime's post-training int8."""

    stage: Literal["quantize"]
    method: Literal["qat", "ptq"] = Field("qat", description="`qat` (quantization-aware distillation) or `ptq`.")
    source: str = Field("student", description="Model artifact to quantize.")
    teacher: str | None = Field(
        None,
        description="Model artifact the quantized model is distilled from. Default: the full-precision `source` "
        "itself (the paper's setting).",
    )
    weights: WeightQuant = Field(default_factory=WeightQuant, description="Weight quantization.")  # type: ignore[arg-type]
    activations: ActivationQuant = Field(default_factory=ActivationQuant, description="Activation quantization.")  # type: ignore[arg-type]
    losses: list[LossUnion] | None = Field(
        None,
        description="Distillation terms for `qat`, by `name`. Default for Transformer encoders: kd + attention_map "
        "+ attention_output (weights 1); for CNNs: kd + ce 0.5.",
    )
    int8: list[Int8Mode] = Field(
        default_factory=lambda: list(INT8_MODES), description="onnxruntime int8 variants made by `ptq`."
    )
    lr: float = Field(1e-5, gt=0, description="Peak learning rate of AdamW (QAT starts from a trained model).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split (fractions allowed).")
    opset: int = Field(MIN_OPSET, ge=MIN_OPSET, le=23, description="ONNX opset.")
    output: str | None = Field(
        None, description="Name of the `qat` artifact (an .onnx file name). Default: `<source>.int8-qat.onnx`."
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
        return v


def _default_losses(model: TaskModel) -> list[LossConfig]:
    from compress.losses.attention import AttentionMapConfig, AttentionOutputConfig

    if model.family == "hf" and model.modality == "text":
        return [
            KDConfig(name="kd", weight=1.0, temperature=1.0),
            AttentionMapConfig(name="attention_map", weight=1.0),
            AttentionOutputConfig(name="attention_output", weight=1.0),
        ]
    return [KDConfig(name="kd", weight=1.0, temperature=1.0), CEConfig(name="ce", weight=0.5)]


def _calibration(data: DataBundle, model: TaskModel, n: int) -> list[dict[str, torch.Tensor]]:
    return [model.inputs(b) for b in data.train.subset(n).loader(16)]


def _run_ptq(source: Artifact, model: TaskModel, config: QuantizeConfig, ctx: Context) -> Artifacts:
    data = ctx.data()
    work = ctx.stage_dir / ".work"
    work.mkdir(exist_ok=True)
    fp32_path = work / f"{source.name}.onnx"
    export_onnx(model, next(iter(data.test.loader(2))), fp32_path, opset=config.opset)
    check_parity(model, fp32_path, data.test, ParityConfig(), source.name)  # type: ignore[call-arg]
    fp32 = Artifact(f"{source.name}.onnx", "onnx", fp32_path, "quantize", parent=source.name, params=source.params)
    fp32_logits = onnx_logits(OrtPredictor(fp32_path, None, None), data.test, config.eval_batch_size, "fp32 logits")
    arts = ptq_artifacts(
        model, source.name, fp32, fp32_logits, config.int8, config, data, ctx.stage_dir, ctx.recipe.data.max_length,
        "quantize",
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    for art in arts:
        art.parent = source.name
    return {a.name: a for a in arts}


@register_stage("quantize", QuantizeConfig)
def run(artifacts: Artifacts, config: QuantizeConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    require(artifacts, config.source, "quantize")
    source = artifacts[config.source]
    if source.kind != "model":
        raise QuantizationError(
            f"quantize.source {config.source!r} is an ONNX file; give a PyTorch model artifact (e.g. student)."
        )
    model = ctx.load_model(source)
    if config.method == "ptq":
        return _run_ptq(source, model, config, ctx)
    return _run_qat(artifacts, source, model, config, ctx)


def _run_qat(
    artifacts: Artifacts, source: Artifact, fp32: TaskModel, config: QuantizeConfig, ctx: Context
) -> Artifacts:
    data = ctx.data()
    teacher_name = config.teacher or config.source
    require(artifacts, teacher_name, "quantize")
    # the full-precision source is the default teacher: frozen, so the loaded copy serves as both
    teacher = fp32 if teacher_name == config.source else ctx.load_model(artifacts[teacher_name])
    teacher.module.eval().requires_grad_(False)
    student = ctx.load_model(source)
    calibration = _calibration(data, student, config.calibration_samples)
    scheme = qat.QatScheme(
        weight_bits=config.weights.bits,
        activation_bits=config.activations.bits,
        per_channel=config.weights.per_channel,
        transformer=student.family == "hf",
    )
    losses = config.losses or _default_losses(student)
    probe = next(iter(data.train.loader(min(8, len(data.train)))))
    # losses are built before quantizers go in: they switch attention to eager, which NNCF must trace
    build_terms(losses, student, teacher, probe)
    student.module = qat.prepare(student.module, calibration, scheme, ignored_types=IGNORED_TYPES)
    quantizers = qat.quantizer_count(student.module)
    if not quantizers:
        raise QuantizationError(f"NNCF found nothing to quantize in {config.source!r} (no MatMul, Linear or Conv).")
    terms = build_terms(losses, student, teacher, probe)
    log.info(
        "quantize (qat): %s W%dA%d (%s weights), %d quantizers, teacher %s; losses %s",
        config.source, scheme.weight_bits, scheme.activation_bits, "per-channel" if scheme.per_channel else
        "per-tensor", quantizers, teacher_name, ", ".join(f"{c.name}x{c.weight:g}" for c in losses),
    )  # fmt: skip
    step = distillation_step(student, teacher, terms, [f"loss_{c.name}" for c in losses])
    result = train(
        student, step, data.train, data.dev, config, seed=ctx.seed, extra=torch.nn.ModuleList(terms), label="qat"
    )
    return {a.name: a for a in [_export_qat(student, fp32, source, config, ctx, result, losses, teacher_name)]}


def _export_qat(
    student: TaskModel,
    fp32: TaskModel,
    source: Artifact,
    config: QuantizeConfig,
    ctx: Context,
    result: object,
    losses: list[LossConfig],
    teacher_name: str,
) -> Artifact:
    """Strip, export to QDQ ONNX, check parity and that onnxruntime really runs integer kernels."""
    data = ctx.data()
    sample = next(iter(data.test.loader(2)))
    fake_quant = TaskModel(
        qat.strip(student.module, student.inputs(sample)),
        student.family,
        student.modality,
        student.num_labels,
        student.tokenizer,
        student.spec,
    )
    name = config.output or f"{config.source}.int8-qat.onnx"
    path = ctx.stage_dir / name
    export_onnx(fake_quant, sample, path, opset=config.opset)
    qdq.store_int8_weights(path)
    parity = check_parity(fake_quant, path, data.test, config.parity, name)
    kernels = ortq.executed_kernels(path)
    integer = {k: v for k, v in kernels.items() if k in ortq.INTEGER_KERNELS}
    if not integer:
        path.unlink()
        raise QuantizationError(
            f"{name}: onnxruntime runs the exported QDQ graph with float kernels only (executed: "
            f"{', '.join(sorted(kernels))}); the artifact would not be integer. Check `weights`/`activations`."
        )
    float_layers = ortq.float_weight_layers(path)
    if float_layers:
        log.warning("%s: %d layers stay float: %s", name, len(float_layers), ", ".join(float_layers[:8]))
    fp32_logits = predict_logits(fp32, data.test, config.eval_batch_size, "fp32 logits").numpy()
    art, _ = onnx_artifact(
        name, path, config.source, "int8-qat", source.params, data, config.eval_batch_size, fp32_logits, parity,
        "quantize",
    )  # fmt: skip
    art.info.update({
        "method": "qat",
        "scheme": {"weights": config.weights.model_dump(), "activations": config.activations.model_dump()},
        "teacher": teacher_name,
        "losses": [c.model_dump() for c in losses],
        "integer_kernels": integer,
        "integer_ops": ortq.integer_ops(path),
        "float_layers": float_layers,
        "training": {k: getattr(result, k) for k in ("steps", "best_step", "seconds", "first_loss", "last_loss",
                                                      "history", "best_dev_accuracy")},
    })  # fmt: skip
    return art
