"""The KV-cache graph of a causal LM (`runtimes/decoding.py` gives its layout): one graph for the prompt and every
cached decode step, exported fp32 with int8-dynamic (8-bit blockwise weights, int8 inputs quantized at run time)
and 4-bit weight-only variants (both MatMulNBits), and as an ExecuTorch program with a static cache. Each is
checked over a prompt and cached decode steps against PyTorch, and measured on its runtime over the test split:
perplexity, next-token accuracy, top-1 agreement with the teacher, greedy completions of fixed prompts. Static
int8 does not apply (activations are not calibrated here)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from compress.artifacts import Artifact
from compress.errors import ExportError, QuantizationError
from compress.evaluation import (
    GenerationCheck,
    ParityConfig,
    completions,
    decoder_metrics,
    decoder_parity,
    teacher_picks,
)
from compress.exporters.decoder import export_decoder_onnx
from compress.graphs.base import ExportOptions, Graph, Job, PtqRequest, QatExport
from compress.models.decoder import cache_shape
from compress.quant import ort as ortq
from compress.quant import qat
from compress.runtimes.decoding import decoder_runner

if TYPE_CHECKING:
    from compress.data.dataset import DataBundle
    from compress.exporters.executorch import ExecuTorchOptions
    from compress.models.task_model import TaskModel
    from compress.quant.ptq import Int8Mode

log = logging.getLogger("compress")

STATIC = ("{stage}.int8: static int8 does not apply to {model!r}, a causal LM (its activations are not calibrated "
          "here); use `int8: [dynamic]`{alt}.")  # fmt: skip


# int8 of a causal LM: 8-bit weights with one scale per 32 input channels (MatMulNBits, int8 inputs quantized at
# run time), not onnxruntime's `quantize_dynamic`. Measured on SmolLM2-135M (pycode test perplexity, 2 cores):
# fp32 12.78; `quantize_dynamic` (one 7-bit weight scale per tensor) 24.85; its `per_channel=True` 1.6e7 (broken on
# onnxruntime 1.32); MatMulNBits 8-bit, block 32: 12.87, decoding as fast as `quantize_dynamic`'s graph (37.5
# tokens/s each, fp32 about 25). Language models' weights have outlier channels that one scale per tensor cannot hold.
INT8_BLOCK = 32
# int4 (round-to-nearest, symmetric MatMulNBits) of a causal LM: one scale per 32 input channels, not onnxruntime's
# default 128. SmolLM2-135M, 32 pycode test blocks, in one run (`benchmarks/lm_smollm2.py --int4-blocks 32,128`):
# fp32 12.65, block 128 20.54 (+62%), block 32 15.96 (+26%), decoding equally fast (42.8 / 42.6 tokens/s), 3% larger.
INT4_BLOCK = 32


class KvCacheGraph(Graph):
    name = "kv_cache"

    def int8_modes(self, modes: Sequence[Int8Mode], *, explicit: bool, stage: str, model: str) -> list[Int8Mode]:
        if "static" in modes and explicit:
            alt = " or `weights: {bits: 4}`" if stage == "quantize" else ""
            raise QuantizationError(STATIC.format(stage=stage, model=model, alt=alt))
        return [m for m in modes if m != "static"]

    def check_executorch(self, opts: ExecuTorchOptions, key: str) -> None:
        if "int8" in opts.precisions and "precisions" in opts.model_fields_set:
            raise ExportError(f"{key}.precisions: int8 ExecuTorch programs of causal LMs are not built (XNNPACK's "
                              "int8 flow does not take a program that updates its cache); give `precisions: [fp32]`, "
                              "or deploy the int4 / int8 ONNX graphs.")  # fmt: skip

    def check_qat(self, *, weight_bits: int, dynamic: bool, stage: str) -> None:
        if dynamic:
            raise QuantizationError(f"{stage}.activations.ranges: dynamic emulates onnxruntime's dynamic int8 of "
                                    "logits graphs; causal LMs train 4-bit weights (leave `activations` "
                                    "out).")  # fmt: skip

    @staticmethod
    def _teacher(job: Job, batch_size: int) -> np.ndarray | None:
        """The teacher's PyTorch picks on the test split, computed once per stage."""
        if job.teacher is None:
            return None
        if "teacher_picks" not in job.memo:
            job.memo["teacher_picks"] = teacher_picks(job.teacher(), job.data.test, batch_size)
        return job.memo["teacher_picks"]  # type: ignore[no-any-return]

    def export(self, model: TaskModel, name: str, params: int | None, job: Job, opts: ExportOptions) -> list[Artifact]:
        teacher = self._teacher(job, opts.eval_batch_size)
        out = self._graphs(model, name, params, job, opset=opts.opset, int8="dynamic" in opts.int8, int4=opts.int4,
                           parity=opts.parity, check=opts.generation, batch_size=opts.eval_batch_size,
                           teacher=teacher)  # fmt: skip
        if opts.executorch is not None:
            out.append(self._program(model, name, params, opts.executorch, job, opts.generation, opts.eval_batch_size,
                                     teacher))  # fmt: skip
        return out

    def ptq(self, model: TaskModel, source: Artifact, job: Job, req: PtqRequest) -> list[Artifact]:
        """int8 dynamic or 4-bit weight-only (round-to-nearest) of the graph; the fp32 graph they are made from
        and checked against is not kept."""
        arts = self._graphs(model, source.name, source.params, job, opset=req.opset,
                            int8=req.weight_bits != 4 and "dynamic" in req.int8, int4=req.weight_bits == 4,
                            parity=ParityConfig(), check=GenerationCheck(), batch_size=req.eval_batch_size,  # type: ignore[call-arg]
                            teacher=self._teacher(job, req.eval_batch_size))  # fmt: skip
        out = []
        for art in arts:
            if art.precision == "fp32":
                art.path.unlink(missing_ok=True)
                continue
            art.parent = source.name
            out.append(art)
        return out

    def write_qat(self, student: TaskModel, fp32: TaskModel, job: Job, q: QatExport) -> Artifact:
        """The trained 4-bit weights baked in, exported with the KV cache, every 4-bit Linear rewritten as
        MatMulNBits; parity over a prompt and cached decode steps; perplexity on onnxruntime."""
        data = job.data
        sample = next(iter(data.test.loader(2)))
        path = job.out_dir / q.name

        def export(model: TaskModel, _: object, target: Path, *, opset: int) -> None:
            export_decoder_onnx(model, target, opset=opset)

        baked = qat.write_4bit(student, sample, path, q.opset, export)
        check = GenerationCheck()  # type: ignore[call-arg]
        parity = decoder_parity(baked, path, data.test, q.parity, check.parity_steps, q.name)
        art, _ = measure(baked, path, q.source, q.precision, q.params, data, check, q.eval_batch_size,
                         self._teacher(job, q.eval_batch_size), job.stage)  # fmt: skip
        art.metrics |= parity
        art.info["integer_kernels"] = {k: v for k, v in ortq.executed_kernels(path).items()
                                       if k in ortq.INTEGER_KERNELS}  # fmt: skip
        if not art.info["integer_kernels"]:
            path.unlink()
            raise QuantizationError(f"{q.name}: onnxruntime runs the exported graph with float kernels only; the "
                                    "artifact would not be quantized.")  # fmt: skip
        return art.finalize()

    def _graphs(
        self, model: TaskModel, name: str, params: int | None, job: Job, *, opset: int, int8: bool, int4: bool,
        parity: ParityConfig, check: GenerationCheck, batch_size: int, teacher: np.ndarray | None,
    ) -> list[Artifact]:  # fmt: skip
        """fp32 with its KV cache (parity over cached decode steps), int8 dynamic and 4-bit weight-only of it."""
        out_dir, data = job.out_dir, job.data
        fp32_path = out_dir / f"{name}.onnx"
        export_decoder_onnx(model, fp32_path, opset=opset)
        checked = decoder_parity(model, fp32_path, data.test, parity, check.parity_steps, name)
        variants: list[tuple[str, str, Path]] = [("fp32", name, fp32_path)]
        if int8:
            path = out_dir / f"{name}.int8-dynamic.onnx"
            ortq.quantize_weights_rtn(fp32_path, path, bits=8, block_size=INT8_BLOCK)
            variants.append(("int8-dynamic", f"{name}.onnx", path))
        if int4:
            path = out_dir / f"{name}.int4.onnx"
            ortq.quantize_weights_rtn(fp32_path, path, block_size=INT4_BLOCK)
            variants.append(("int4", f"{name}.onnx", path))
        out, fp32_picks = [], None
        for precision, parent, path in variants:
            art, picks = measure(model, path, parent, precision, params, data, check, batch_size, teacher, job.stage,
                                 fp32_picks)  # fmt: skip
            if fp32_picks is None:
                fp32_picks = picks
                art.metrics |= checked
            out.append(art.finalize())
        return out

    def _program(
        self, model: TaskModel, name: str, params: int | None, opts: ExecuTorchOptions, job: Job,
        check: GenerationCheck, batch_size: int, teacher: np.ndarray | None,
    ) -> Artifact:  # fmt: skip
        """`<name>.xnnpack.pte` with a static cache of ``data.max_length`` positions: parity over a prompt and
        cached decode steps, perplexity on ExecuTorch. int8 programs of causal LMs are not made (said, or refused
        when the recipe lists them)."""
        from compress.exporters.executorch import export_decoder_pte

        self.check_executorch(opts, "export.executorch")
        if "int8" in opts.precisions:
            log.info("export: %s is a causal LM: its ExecuTorch program is fp32 (no int8 program with a cache)", name)
        data = job.data
        path = job.out_dir / f"{name}.xnnpack.pte"
        ops = export_decoder_pte(model, path, max_cache_len=data.max_length)
        parity_cfg = ParityConfig(max_abs_diff=opts.max_abs_diff)  # type: ignore[call-arg]
        parity = decoder_parity(model, path, data.test, parity_cfg, check.parity_steps, name, runtime="executorch")
        art, _ = measure(model, path, name, "fp32", params, data, check, batch_size, teacher, job.stage,
                         runtime="executorch")  # fmt: skip
        art.metrics |= parity
        art.info |= {"backend": "xnnpack", "operators": ops, "max_cache_len": data.max_length}
        log.info("%s: %d XNNPACK subgraphs, static cache of %d positions", path.name,
                 ops.get("xnnpack_delegate", 0), data.max_length)  # fmt: skip
        return art.finalize()


def measure(
    model: TaskModel, path: Path, parent: str, precision: str, params: int | None, data: DataBundle,
    check: GenerationCheck, eval_batch_size: int, teacher: np.ndarray | None, stage: str,
    fp32_picks: np.ndarray | None = None, runtime: str = "onnxruntime",
) -> tuple[Artifact, np.ndarray]:  # fmt: skip
    """The artifact of one KV-cache graph (an ExecuTorch program on ExecuTorch: ``runtime``): perplexity,
    next-token accuracy, top-1 agreement with the teacher (and with the fp32 graph's picks, when given) over the
    test split, the greedy completions of the fixed prompts, and the low-bit operators it holds. Also its argmax
    token of every counted position."""
    metrics, picks = decoder_metrics(runtime, path, model.module, data.test, eval_batch_size,
                                     f"perplexity {path.name}", teacher)  # fmt: skip
    if fp32_picks is not None:
        metrics["top1_agreement_with_fp32"] = float((picks == fp32_picks).mean()) if len(picks) else 1.0
    layout = cache_shape(model.module)
    said = completions(decoder_runner(runtime, path, layout), model.tokenizer, check) if model.tokenizer else []
    info: dict = {"kv_cache": layout.as_info(), "completions": said}
    if precision != "fp32" and runtime != "executorch":
        info["integer_ops"] = ortq.integer_ops(path)
    kind: Literal["onnx", "pte"] = "pte" if runtime == "executorch" else "onnx"
    art = Artifact(path.name, kind, path, stage, parent=parent, precision=precision, params=params,
                   metrics=metrics, info=info)  # fmt: skip
    log.info("%s: perplexity %.3f, next-token accuracy %.4f (%s, test split)", path.name,
             metrics["perplexity"], metrics["next_token_accuracy"], runtime)  # fmt: skip
    return art, picks
