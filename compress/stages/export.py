"""`export`: ONNX fp32 with a parity check, onnxruntime int8 (dynamic, static QDQ), accuracy on the artifact."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifacts
from compress.context import Context
from compress.evaluation import GenerationCheck, ParityConfig
from compress.exporters.executorch import ExecuTorchOptions
from compress.exporters.onnx import MIN_OPSET
from compress.families import family_of
from compress.graphs import ExportOptions, Job
from compress.quant.ptq import INT8_MODES, Int8Mode, PtqOptions
from compress.stages.base import Chain, StageConfig, register_stage, require

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

    def check(self, chain: Chain) -> list[str]:
        if not chain.supports("export"):
            return [f"{chain.key}: export does not apply to {chain.member} yet (no exporter for it); leave the stage "
                    "out and use the PyTorch model."]  # fmt: skip
        explicit = "int8" in self.model_fields_set
        graph, model = chain.graph(self.models or sorted(chain.moe))
        problems = chain.refusal(lambda: graph.int8_modes(self.int8, explicit=explicit, stage=chain.key,
                                                          model=model))  # fmt: skip
        executorch = self.executorch
        if executorch is not None:
            problems += chain.refusal(lambda: graph.check_executorch(executorch, f"{chain.key}.executorch"))
        return problems


@register_stage("export", ExportConfig)
def run(artifacts: Artifacts, config: ExportConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    names = config.models or [n for n, a in artifacts.items() if a.kind == "model"]
    for n in names:
        require(artifacts, n, "export")
    data = ctx.data()
    memo: dict = {}  # what graphs compute once for every model (a causal LM teacher's picks)
    teacher = (lambda: ctx.load_model(artifacts["teacher"])) if "teacher" in artifacts else None
    out: Artifacts = {}
    for name in names:
        source = artifacts[name]
        model = ctx.load_model(source)
        graph = family_of(model).graph(model)
        if not graph.exports and not config.models:
            log.info("export: skipping %s (a %s model: it has no ONNX graph)", name, graph.name)
            continue
        modes = graph.int8_modes(config.int8, explicit="int8" in config.model_fields_set, stage="export",
                                 model=name)  # fmt: skip
        job = Job(data, ctx.stage_dir, "export", teacher if name != "teacher" else None, memo)
        opts = ExportOptions(config.opset, modes, config, config.parity, config.int4, config.generation,
                             config.executorch, config.eval_batch_size)  # fmt: skip
        for art in graph.export(model, name, source.params, job, opts):
            out[art.name] = art
    return out
