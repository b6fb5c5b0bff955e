"""Post-training int8 with onnxruntime's quantizer: dynamic, and static QDQ with per-channel weights.

(optimum's ORTQuantizer wraps these same calls; since optimum 2 it lives in `optimum-onnx`, which pins
transformers < 4.58, so we call onnxruntime.quantization directly.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# onnx is imported where it is used: importing it costs about 1 s (ml_dtypes), which every run and
# `compress validate` paid when these modules were imported
if TYPE_CHECKING:
    import onnx

from compress.errors import ExportError

log = logging.getLogger("compress")

# Integer kernels onnxruntime CPU runs fast. Attention softmax, LayerNorm, GELU and residual Adds stay in
# float: quantizing them with calibrated ranges is what collapses Transformer accuracy (see anchors.md).
TEXT_OPS = ["MatMul", "Gemm"]
IMAGE_OPS = ["Conv", "MatMul", "Gemm"]
# Dynamic int8: matrix products and fused attention. Conv is left out because onnxruntime's CPU ConvInteger has
# no int8-weight kernel. Embedding tables (Gather, fused EmbedLayerNormalization) are opt-in: EMBEDDING_OPS.
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention"]
EMBEDDING_OPS = ["Gather", "EmbedLayerNormalization"]


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[Path]:
    """onnxruntime's quantizer and optimizer save intermediate models with external data named by uuid in
    the current directory; run them from a temporary one so nothing is left in the user's folder."""
    old = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="compress-ort-") as tmp:
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(old)


def _preprocess(src: Path, dst: Path) -> Path:
    """onnxruntime's recommended pre-processing (symbolic shape inference + graph optimisation)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    error: Exception | None = None
    for skip_symbolic in (False, True):  # symbolic shape inference fails on some exported shape expressions
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return dst
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; fall back to the raw graph
            error = exc
    log.warning("quantization pre-processing failed (%s); quantizing the unprocessed graph", error)
    return src


# Hugging Face model types whose encoder graph onnxruntime's BERT fusion recognises.
FUSABLE_MODEL_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "camembert"}


def fuse_transformer(
    src: Path, dst: Path, *, num_heads: int, hidden_size: int, head_size: int | None = None
) -> dict[str, int]:
    """onnxruntime's transformer optimizer: fuse attention, SkipLayerNorm, BiasGelu and embeddings into
    onnxruntime contrib ops. Quantizing the fused graph is what gives int8 its speed: a fused `Attention`
    becomes one int8 QAttention kernel instead of unfused MatMuls around float softmax. Returns the counts of
    fused operators (empty if nothing was fused).

    With `head_size`, layers may have different head counts (pruned encoders): the optimizer takes one global
    head count and cannot read it from Hugging Face graphs (they reshape to ``(..., -1, head_size)``), so the
    attention is fused with the nominal `num_heads` and each fused node then gets its own count, read from the
    width of its Q projection."""
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = src.resolve(), dst.resolve()
    # the optimizer warns once per layer that the nominal width differs from the Q/K/V input width: expected
    # (onnxruntime puts its transformers folder on sys.path: the module logs as "fusion_attention")
    fusion_logs = [logging.getLogger(n) for n in ("fusion_attention", "onnxruntime.transformers.fusion_attention")]
    levels = [lg.level for lg in fusion_logs]
    for lg in fusion_logs:
        lg.setLevel(logging.ERROR)
    with _scratch_cwd(), contextlib.redirect_stdout(io.StringIO()):
        model = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
        if head_size:
            _set_attention_heads(model.model, head_size)
        model.save_model_to_file(str(dst))
    for lg, level in zip(fusion_logs, levels, strict=True):
        lg.setLevel(level)
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


def _set_attention_heads(graph_model: onnx.ModelProto, head_size: int) -> None:
    """Give every fused `Attention` node ``num_heads = width of Q / head_size``."""
    weights = {t.name: t for t in graph_model.graph.initializer}
    for node in graph_model.graph.node:
        if node.op_type != "Attention" or node.input[1] not in weights:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "qkv_hidden_sizes" in attrs:
            q_width = int(attrs["qkv_hidden_sizes"].ints[0])
        else:
            q_width = int(np.prod(weights[node.input[1]].dims[1:])) // 3
        attrs["num_heads"].i = q_width // head_size


def quantize_dynamic(src: Path, dst: Path, op_types: list[str]) -> None:
    """onnxruntime's dynamic int8 of ``op_types``: int8 weights with one scale per tensor, uint8 inputs quantized
    at run time."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    src, dst = src.resolve(), dst.resolve()
    with _scratch_cwd() as tmp:
        pre = _preprocess(src, tmp / "pre.onnx")
        try:
            ort_quantize_dynamic(
                str(pre),
                str(dst),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=[o for o in op_types if o != "Conv"],
                per_channel=False,
                extra_options={"EnableSubgraph": False, "DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"onnxruntime dynamic quantization of {src.name} failed: {exc}") from None


def fused_dynamic_int8(src: Path, dst: Path, *, num_heads: int, hidden_size: int, head_size: int) -> None:
    """The deployed int8 form of an exported BERT-family graph, without a data check: onnxruntime's attention
    fusion, then dynamic int8 of matrix products and fused attention (what `int8: [dynamic]` deploys). Latency
    models (search tables, pruning costs) time this graph when the recipe deploys int8: quantization's gain
    differs per shape (the fused int8 attention, the per-layer float LayerNorms), so it is measured, not assumed."""
    with tempfile.TemporaryDirectory(prefix="compress-int8-") as tmp:
        fused = Path(tmp) / "fused.onnx"
        fuse_transformer(src, fused, num_heads=num_heads, hidden_size=hidden_size, head_size=head_size)
        quantize_dynamic(fused, dst, DYNAMIC_OPS)


def quantize_weights_rtn(src: Path, dst: Path, *, bits: int = 4, block_size: int = 128) -> None:
    """onnxruntime's post-training blockwise weights: round-to-nearest, symmetric, one scale per ``block_size``
    input channels, MatMul -> MatMulNBits with ``bits``-bit weights (accuracy level 4: activations quantized to
    int8 at run time on CPU, an integer kernel). 4 bits: the PTQ baseline of 4-bit QAT; 8 bits: the int8 of causal
    LMs (see `graphs/kv_cache.py` for why not `quantize_dynamic` there)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    cfg = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    try:
        with _scratch_cwd(), contextlib.redirect_stdout(io.StringIO()):
            quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
            quantizer.process()
            quantizer.model.save_model_to_file(str(dst.resolve()), use_external_data_format=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"onnxruntime {bits}-bit quantization of {src.name} failed: {exc}") from None


INTEGER_OPS = {
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QLinearMatMul",
    "QLinearConv",
    "ConvInteger",
    "QGemm",
    "MatMulNBits",  # 4- or 8-bit weights; on CPU with accuracy_level 4 an integer kernel (int8 inputs)
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
}


def integer_ops(path: Path) -> dict[str, int]:
    """Counts of integer / quantization operators in an ONNX graph (empty: the model is still float)."""
    import onnx
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in INTEGER_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


class _Reader:
    """onnxruntime CalibrationDataReader over batches of real inputs."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self._it = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_static(
    src: Path,
    dst: Path,
    batches: Iterator[dict[str, np.ndarray]],
    *,
    op_types: list[str],
    method: str,
    per_channel: bool = True,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    src, dst = src.resolve(), dst.resolve()
    with _scratch_cwd() as tmp:
        pre = _preprocess(src, tmp / "pre.onnx")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                ort_quantize_static(
                    str(pre),
                    str(dst),
                    _Reader(batches),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=op_types,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    # minmax: the range over all calibration batches, not a moving average of per-batch ranges
                    # (on a pruned SST-2 student, OpenVINO: 88.65% both times vs 87.84% / 88.30%)
                    extra_options={"CalibMovingAverage": False, "CalibPercentile": 99.99},
                )
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"onnxruntime static quantization of {src.name} failed: {exc}") from None


# Kernels that compute in integers. QuantizeLinear/DequantizeLinear alone only convert: a QDQ graph whose
# optimised form still runs float MatMuls between them is "fake" quantization, not integer arithmetic.
INTEGER_KERNELS = INTEGER_OPS - {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"} | {
    "MatMulIntegerToFloat",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
}


def executed_kernels(path: Path) -> dict[str, int]:
    """Operator counts of the graph onnxruntime (CPU) actually executes: the model after its own graph
    optimisations, where QDQ pairs around MatMul/Conv become integer kernels (or do not)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="compress-ort-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable, no NCHWc
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def float_weight_layers(path: Path) -> list[str]:
    """Names of MatMul/Gemm/Conv nodes of a QDQ graph whose weight is a float initializer, i.e. not fed by a
    DequantizeLinear: the layers the quantizer left in float."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1 and node.input[1] in weights:
            found.append(node.name or node.output[0])
    return found
