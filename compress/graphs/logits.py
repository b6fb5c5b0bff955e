"""The logits graph: inputs -> logits (text encoders, CNNs, users' models). Exported with dynamic batch (and
sequence) axes, quantized by onnxruntime (dynamic int8 after the family's transformer fusion, static QDQ, 4-bit
round-to-nearest), written from quantization-aware training as QDQ, MatMulNBits or the fused dynamic-int8 graph,
accuracy measured on onnxruntime over the test split."""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compress.errors import QuantizationError
from compress.evaluation import ParityConfig, check_parity, onnx_artifact, onnx_logits, predictor
from compress.exporters.onnx import export_onnx
from compress.graphs.base import ExportOptions, Graph, Job, PtqRequest, QatExport
from compress.quant import dynamic_qat, qat
from compress.quant import ort as ortq
from compress.quant.ptq import MOE_STATIC, PtqScheme, fused_graph, ptq_artifacts
from compress.training.evaluate import predict_logits

if TYPE_CHECKING:
    from compress.artifacts import Artifact
    from compress.models.task_model import TaskModel
    from compress.quant.ptq import Int8Mode

log = logging.getLogger("compress")


class LogitsGraph(Graph):
    """``scheme``: how onnxruntime quantizes the family's members; ``moe``: the model has token-grouped experts
    (data-dependent shapes, which static calibration cannot take)."""

    name = "logits"

    def __init__(self, scheme: PtqScheme, *, moe: bool = False) -> None:
        self.scheme, self.moe = scheme, moe

    def int8_modes(self, modes: Sequence[Int8Mode], *, explicit: bool, stage: str, model: str) -> list[Int8Mode]:
        if not self.moe or "static" not in modes:
            return list(modes)
        if explicit:
            # token-grouped experts give every calibration batch tensors of another shape (the tokens routed to
            # each expert), which onnxruntime's calibrator cannot stack ("inhomogeneous shape", after gigabytes)
            raise QuantizationError(MOE_STATIC.format(stage=stage, name=model))
        log.info("%s: %s is a MoE model: static int8 left out (its experts' shapes depend on the data)", stage, model)
        return [m for m in modes if m != "static"]

    def _fp32(self, model: TaskModel, name: str, params: int | None, job: Job, opset: int, parity: ParityConfig,
              batch_size: int, path: Path) -> tuple[Artifact, np.ndarray]:  # fmt: skip
        export_onnx(model, next(iter(job.data.test.loader(2))), path, opset=opset)
        checked = check_parity(model, path, job.data.test, parity, name)
        return onnx_artifact(f"{name}.onnx", path, name, "fp32", params, job.data, batch_size, None, checked, job.stage)

    def export(self, model: TaskModel, name: str, params: int | None, job: Job, opts: ExportOptions) -> list[Artifact]:
        from compress.exporters.executorch import pte_artifacts

        fp32, fp32_logits = self._fp32(model, name, params, job, opts.opset, opts.parity, opts.eval_batch_size,
                                       job.out_dir / f"{name}.onnx")  # fmt: skip
        out = [fp32, *ptq_artifacts(model, self.scheme, name, fp32, fp32_logits, opts.int8, opts.ptq, job.data,
                                    job.out_dir, job.stage)]  # fmt: skip
        if opts.executorch is not None:
            out += pte_artifacts(model, name, params, opts.executorch, job.data, job.out_dir, opts.eval_batch_size)
        return out

    def ptq(self, model: TaskModel, source: Artifact, job: Job, req: PtqRequest) -> list[Artifact]:
        work = job.out_dir / ".work"
        work.mkdir(exist_ok=True)
        fp32, fp32_logits = self._fp32(model, source.name, source.params, job, req.opset, ParityConfig(),  # type: ignore[call-arg]
                                       req.eval_batch_size, work / f"{source.name}.onnx")  # fmt: skip
        if req.weight_bits == 4:
            arts = [self._rtn_4bit(source.name, fp32, fp32_logits, job, req.eval_batch_size)]
        else:
            arts = ptq_artifacts(model, self.scheme, source.name, fp32, fp32_logits, req.int8, req.ptq, job.data,
                                 job.out_dir, job.stage)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
        for art in arts:
            art.parent = source.name
        return arts

    def _rtn_4bit(self, name: str, fp32: Artifact, fp32_logits: np.ndarray, job: Job, batch_size: int) -> Artifact:
        path = job.out_dir / f"{name}.int4-rtn.onnx"
        ortq.quantize_weights_rtn(fp32.path, path)
        art, _ = onnx_artifact(path.name, path, fp32.name, "int4-rtn", fp32.params, job.data, batch_size, fp32_logits,
                               {}, job.stage)  # fmt: skip
        art.info["integer_ops"] = ortq.integer_ops(path)
        if not art.info["integer_ops"]:
            log.warning("%s: onnxruntime's 4-bit quantizer found no MatMul to quantize; it stays float", art.name)
        return art

    # ---- quantization-aware trained models --------------------------------------------------------------------
    def write_qat(self, student: TaskModel, fp32: TaskModel, job: Job, q: QatExport) -> Artifact:
        if q.dynamic:
            return self._write_dynamic(student, fp32, job, q)
        data = job.data
        sample = next(iter(data.test.loader(2)))
        path = job.out_dir / q.name
        if q.weight_bits == 4:
            exported = qat.write_4bit(student, sample, path, q.opset, export_onnx)
        else:
            exported = qat.write_qdq(student, sample, path, q.opset, export_onnx)
        parity = check_parity(exported, path, data.test, q.parity, q.name)
        kernels = ortq.executed_kernels(path)
        integer = {k: v for k, v in kernels.items() if k in ortq.INTEGER_KERNELS}
        if not integer:
            path.unlink()
            raise QuantizationError(
                f"{q.name}: onnxruntime runs the exported graph with float kernels only (executed: "
                f"{', '.join(sorted(kernels))}); the artifact would not be quantized. Check `weights`/`activations`."
            )
        float_layers = ortq.float_weight_layers(path)
        if float_layers:
            log.warning("%s: %d layers stay float: %s", q.name, len(float_layers), ", ".join(float_layers[:8]))
        art = self._measured(fp32, path, job, q, parity)
        art.info.update({"integer_kernels": integer, "integer_ops": ortq.integer_ops(path),
                         "float_layers": float_layers})  # fmt: skip
        return art

    def _write_dynamic(self, student: TaskModel, fp32: TaskModel, job: Job, q: QatExport) -> Artifact:
        """The trained float weights through the deployed dynamic-int8 path (export, onnxruntime's fusion, dynamic
        quantization); parity of the emulating PyTorch model against the integer graph."""
        data = job.data
        sample = next(iter(data.test.loader(2)))
        work = job.out_dir / ".work"
        work.mkdir(exist_ok=True)
        path = job.out_dir / q.name
        trained_fp32 = student.with_module(dynamic_qat.strip(copy.deepcopy(student.module)))
        export_path = work / f"{q.source}.qat.onnx"
        export_onnx(trained_fp32, sample, export_path, opset=q.opset)
        check_parity(trained_fp32, export_path, data.test, ParityConfig(), f"{q.name} (float export)")  # type: ignore[call-arg]
        src, fused = fused_graph(self.scheme.fusion, export_path, work, data.test)
        ortq.quantize_dynamic(src, path, ortq.DYNAMIC_OPS)
        shutil.rmtree(work, ignore_errors=True)
        # batch 1, as deployed: the emulation takes each example's own activation range (quant/dynamic_qat.py),
        # onnxruntime one range over the whole batch, padding included (the 3-layer SST-2 student's logits differed
        # by 0.56 at batch 32, by 0.018 at batch 1)
        parity = check_parity(student, path, data.test, q.parity, q.name, batch_size=1)
        art = self._measured(fp32, path, job, q, parity)
        art.info.update({"integer_kernels": {k: v for k, v in ortq.executed_kernels(path).items()
                                             if k in ortq.INTEGER_KERNELS},
                         "integer_ops": ortq.integer_ops(path), "fused_ops": fused,
                         "float_layers": ortq.float_weight_layers(path)})  # fmt: skip
        return art

    @staticmethod
    def _measured(fp32: TaskModel, path: Path, job: Job, q: QatExport, parity: dict[str, float]) -> Artifact:
        fp32_logits = predict_logits(fp32, job.data.test, q.eval_batch_size, "fp32 logits").numpy()
        art, _ = onnx_artifact(q.name, path, q.source, q.precision, q.params, job.data, q.eval_batch_size, fp32_logits,
                               parity, job.stage)  # fmt: skip
        return art


def dev_accuracy(path: Path, job: Job, batch_size: int, label: str) -> float:
    """Top-1 accuracy of a logits graph on onnxruntime over the dev split."""
    logits = onnx_logits(predictor("onnxruntime", path), job.data.dev, batch_size, label)
    return float((logits.argmax(-1) == job.data.dev.labels.numpy()).mean())
