"""onnxruntime post-training int8 of an exported ONNX graph, shared by `export` and `quantize: {method: ptq}`:
the options, calibration on real training inputs, transformer fusion before dynamic int8, and the artifacts with
their accuracy measured on onnxruntime."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from compress.artifacts import Artifact
from compress.config import Strict
from compress.data.dataset import DataBundle, Split
from compress.evaluation import feeds, onnx_artifact, predictor
from compress.models.task_model import TaskModel
from compress.quant import ort as ortq
from compress.ui import progress

log = logging.getLogger("compress")

Int8Mode = Literal["dynamic", "static"]
INT8_MODES: tuple[Int8Mode, ...] = ("dynamic", "static")


class PtqOptions(Strict):
    """onnxruntime post-training int8 settings (shared by `export` and `quantize: {method: ptq}`)."""

    calibration_samples: int = Field(256, gt=0, description="Training examples used to calibrate `static`.")
    calibration_method: Literal["minmax", "percentile", "entropy"] = Field(
        "percentile",
        description="How `static` picks activation ranges: `minmax` (the range over all calibration inputs), "
        "`percentile` (99.99th), `entropy`. Measured on pruned 3-layer SST-2 students on OpenVINO, 3 calibration "
        "draws each: minmax 0.35-0.46 points above percentile on test.",
    )
    quantize_ops: list[str] | None = Field(
        None,
        description="Operator types quantized (default: the model family's: MatMul, Gemm for encoders; Conv, "
        "MatMul, Gemm for CNNs).",
    )
    per_channel: bool = Field(True, description="Per-channel weight scales for `static`.")
    quantize_embeddings: bool = Field(
        False,
        description="Store embedding tables in int8 too (`dynamic`). Measured on the SST-2 3-layer student: "
        "53 MB -> 17.5 MB, no speed change, 0.7 points lower accuracy.",
    )
    fuse: bool = Field(
        True,
        description="Before `dynamic` int8 of BERT-family encoders, fuse attention / SkipLayerNorm / BiasGelu with "
        "onnxruntime's transformer optimizer (onnxruntime contrib ops: the int8 artifact targets onnxruntime; the "
        "fp32 `.onnx` stays plain, portable ONNX).",
    )
    eval_batch_size: int = Field(64, gt=0, description="Batch size for accuracy on onnxruntime.")


def calibration_batches(split: Split, n: int, names: list[str], length: int) -> Iterator[dict[str, np.ndarray]]:
    """Real training inputs; text is padded to one fixed length because onnxruntime's histogram
    calibrators concatenate every batch of a tensor."""
    loader = split.subset(n).loader(16)
    with progress("calibrating int8", len(loader)) as bar:
        for batch in loader:
            bar.advance()
            yield _padded(batch, split, length, names)


def _padded(batch: dict[str, torch.Tensor], split: Split, length: int, names: list[str]) -> dict[str, np.ndarray]:
    if split.is_text:
        pad = length - batch["input_ids"].shape[1]
        batch["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, pad), value=split.pad_id)
        batch["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, pad), value=0)
    return feeds(batch, names)


FUSION_TOLERANCE = 1e-3  # max |logit difference| between the fused and the exported fp32 graph


@dataclass(frozen=True)
class PtqScheme:
    """What a model family tells onnxruntime's post-training quantization about its members
    (`Family.ptq_scheme`): the operator types static int8 quantizes by default, and the attention shape for
    onnxruntime's transformer fusion before dynamic int8 (None: the graph is quantized unfused)."""

    static_ops: tuple[str, ...] = tuple(ortq.TEXT_OPS)
    fusion: tuple[int, int, int] | None = None  # (heads, hidden width, head size) of the attention to fuse
    # module paths of the projections the fusion concatenates into one weight (one int8 scale): Q, K, V per layer
    shared_scale: tuple[tuple[str, ...], ...] = ()


def fused_graph(
    fusion: tuple[int, int, int] | None, fp32_path: Path, work: Path, test: Split
) -> tuple[Path, dict[str, int]]:
    """The graph fused by onnxruntime's transformer optimizer for an attention of shape ``fusion`` (heads,
    width, head size), or the plain export when there is none or when the fusion does not reproduce the exported
    graph's outputs (checked on real test inputs)."""
    if fusion is None:
        return fp32_path, {}
    fused = work / fp32_path.name
    fused.parent.mkdir(exist_ok=True)
    heads, width, size = fusion
    ops = ortq.fuse_transformer(fp32_path, fused, num_heads=heads, hidden_size=width, head_size=size)
    batch = next(iter(test.loader(32)))
    try:
        ref, got = (predictor("onnxruntime", p) for p in (fp32_path, fused))
        diff = float(np.abs(ref(feeds(batch, ref.input_names)) - got(feeds(batch, got.input_names))).max())
    except Exception as exc:  # noqa: BLE001 - a fused graph onnxruntime cannot run is simply not used
        diff, why = float("inf"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    else:
        why = f"max |logit difference| {diff:.2e}"
    if diff > FUSION_TOLERANCE:
        log.warning("%s: onnxruntime's attention fusion changed the outputs (%s); quantizing the unfused graph.",
                    fp32_path.name, why)  # fmt: skip
        return fp32_path, {}
    log.info("%s: fused for onnxruntime: %s", fp32_path.name, ", ".join(f"{k} x{v}" for k, v in ops.items()) or "none")
    return fused, ops


MOE_STATIC = (
    "{stage}.int8: static int8 does not apply to {name!r}, a MoE model: its token-grouped experts have a "
    "data-dependent shape that onnxruntime's static calibration cannot handle. Use `int8: [dynamic]` for it."
)


def ptq_artifacts(
    model: TaskModel,
    scheme: PtqScheme,
    name: str,
    fp32: Artifact,
    fp32_logits: np.ndarray,
    modes: list[Int8Mode],
    opts: PtqOptions,
    data: DataBundle,
    out_dir: Path,
    stage: str,
) -> list[Artifact]:
    """onnxruntime int8 of ``fp32`` (the exported graph of ``model``, quantized as its family's ``scheme`` says):
    one artifact per mode, accuracy measured. The modes are the graph's (`Graph.int8_modes`)."""
    out = []
    ops = opts.quantize_ops or list(scheme.static_ops)
    work = out_dir / ".fused"
    for mode in modes:
        q_path = out_dir / f"{name}.int8-{mode}.onnx"
        fused_ops: dict[str, int] = {}
        if mode == "dynamic":
            src, fused_ops = fused_graph(scheme.fusion, fp32.path, work, data.test) if opts.fuse else (fp32.path, {})
            embeddings = ortq.EMBEDDING_OPS if opts.quantize_embeddings else []
            ortq.quantize_dynamic(src, q_path, opts.quantize_ops or ortq.DYNAMIC_OPS + embeddings)
        else:
            ortq.quantize_static(
                fp32.path,
                q_path,
                calibration_batches(data.train, opts.calibration_samples, model.input_names(), data.max_length),
                op_types=ops,
                method=opts.calibration_method,
                per_channel=opts.per_channel,
            )
        art, _ = onnx_artifact(
            q_path.name, q_path, fp32.name, f"int8-{mode}", fp32.params, data, opts.eval_batch_size, fp32_logits, {},
            stage,
        )  # fmt: skip
        art.info["integer_ops"] = ortq.integer_ops(q_path)
        art.info["fused_ops"] = fused_ops
        if not art.info["integer_ops"]:
            log.warning("%s holds no integer operators: it stays float (nothing matched %s)", art.name, ops)
        out.append(art)
    shutil.rmtree(work, ignore_errors=True)  # intermediate graphs, not artifacts
    return out
