"""`export`: ONNX fp32 with a parity check, onnxruntime int8 (dynamic, static QDQ), accuracy on the artifact."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from compress.artifacts import Artifacts
from compress.context import Context
from compress.errors import ExportError
from compress.evaluation import GenerationCheck, ParityConfig, check_parity, onnx_artifact, teacher_picks
from compress.exporters.decoder import decoder_artifacts
from compress.exporters.executorch import ExecuTorchOptions, decoder_pte_artifacts, pte_artifacts
from compress.exporters.onnx import MIN_OPSET, export_onnx
from compress.families import family_of
from compress.models.bnb import is_bnb
from compress.moe.convert import is_moe
from compress.quant.ptq import INT8_MODES, Int8Mode, PtqOptions, ptq_artifacts
from compress.stages.base import StageConfig, register_stage, require

log = logging.getLogger("compress")


class ExportConfig(PtqOptions, StageConfig):
    """Export models to ONNX and quantize them to int8 with onnxruntime (post-training; `quantize` adds QAT)."""

    stage: Literal["export"]
    models: list[str] | None = Field(None, description="Model artifacts to export (default: every model).")
    opset: int = Field(MIN_OPSET, ge=MIN_OPSET, le=23, description="ONNX opset.")
    int8: list[Int8Mode] = Field(
        default_factory=lambda: list(INT8_MODES),
        description="onnxruntime post-training int8 variants: `dynamic` (weights int8, activations quantized "
        "at run time) and `static` (QDQ, per-channel weights, activations calibrated on training data).",
    )
    parity: ParityConfig = Field(default_factory=ParityConfig, description="fp32 parity thresholds.")  # type: ignore[arg-type]
    int4: bool = Field(
        True,
        description="Causal LMs: also 4-bit weight-only (onnxruntime MatMulNBits, round-to-nearest, symmetric), where "
        "memory-bound decoding gains most. Other families take 4-bit from `quantize` (`weights.bits: 4`).",
    )
    generation: GenerationCheck = Field(
        default_factory=GenerationCheck,  # type: ignore[arg-type]
        description="Causal LMs: decode steps the parity check runs through the KV cache, and the fixed prompts "
        "whose greedy completions the report prints.",
    )
    executorch: ExecuTorchOptions | None = Field(
        None,
        description="Also export ExecuTorch programs delegated to XNNPACK (`<model>.xnnpack.pte`, "
        "`<model>.xnnpack-int8.pte`), for the `executorch` runtime and mobile apps. Needs the `executorch` extra.",
    )


@register_stage("export", ExportConfig)
def run(artifacts: Artifacts, config: ExportConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    names = config.models or [n for n, a in artifacts.items() if a.kind == "model"]
    for n in names:
        require(artifacts, n, "export")
    data = ctx.data()
    out: Artifacts = {}
    teacher_tokens: np.ndarray | None = None  # causal LMs: the teacher's top-1 tokens, computed once
    for name in names:
        source = artifacts[name]
        model = ctx.load_model(source)
        if is_bnb(model.module):
            if config.models:
                raise ExportError(
                    f"export.models: {name!r} is loaded with bitsandbytes, which does not export to ONNX."
                )
            log.info("export: skipping %s (bitsandbytes weights do not export to ONNX)", name)
            continue
        family = family_of(model)
        if family.onnx_graph == "kv_cache":
            if "static" in config.int8 and "int8" in config.model_fields_set:
                raise ExportError(f"export.int8: static int8 does not apply to {name!r}, a causal LM (its "
                                  "activations are not calibrated here); use `int8: [dynamic]`.")  # fmt: skip
            if teacher_tokens is None and "teacher" in artifacts:
                teacher_tokens = teacher_picks(ctx.load_model(artifacts["teacher"]), data.test, config.eval_batch_size)
            teacher = teacher_tokens if name != "teacher" else None
            for art in decoder_artifacts(
                model, name, source.params, data, ctx.stage_dir, opset=config.opset, int8="dynamic" in config.int8,
                int4=config.int4, parity=config.parity, check=config.generation,
                eval_batch_size=config.eval_batch_size, teacher=teacher,
            ):  # fmt: skip
                out[art.name] = art
            if config.executorch is not None:
                for art in decoder_pte_artifacts(
                    model, name, source.params, config.executorch, data, ctx.stage_dir,
                    max_cache_len=ctx.recipe.data.max_length, check=config.generation,
                    eval_batch_size=config.eval_batch_size, teacher=teacher,
                ):  # fmt: skip
                    out[art.name] = art
            continue
        fp32_path = ctx.stage_dir / f"{name}.onnx"
        export_onnx(model, next(iter(data.test.loader(2))), fp32_path, opset=config.opset)
        parity = check_parity(model, fp32_path, data.test, config.parity, name)
        fp32, fp32_logits = onnx_artifact(
            f"{name}.onnx", fp32_path, name, "fp32", source.params, data, config.eval_batch_size, None, parity
        )
        out[fp32.name] = fp32
        modes = config.int8
        if "int8" not in config.model_fields_set and is_moe(model.module) and "static" in modes:
            log.info("export: %s is a MoE model: static int8 left out (its experts' shapes depend on the data)", name)
            modes = [m for m in modes if m != "static"]
        scheme = family.ptq_scheme(model)
        for art in ptq_artifacts(
            model, scheme, name, fp32, fp32_logits, modes, config, data, ctx.stage_dir, ctx.recipe.data.max_length,
            "export",
        ):  # fmt: skip
            out[art.name] = art
        if config.executorch is not None:
            for art in pte_artifacts(model, name, source.params, config.executorch, data, ctx.stage_dir,
                                     config.eval_batch_size):  # fmt: skip
                out[art.name] = art
    return out
