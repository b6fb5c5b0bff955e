"""QDQ graphs as the PyTorch exporter writes them keep float weights followed by QuantizeLinear, so the file is
as large as fp32 and every session quantizes the weights at load time. `store_int8_weights` folds each such
QuantizeLinear of a constant weight into an int8 initializer that feeds its DequantizeLinear directly: the
file shrinks about 4x and the graph onnxruntime executes is unchanged (it folds the same constant itself).

onnxruntime's quantizer and NNCF's ONNX backend write int8 initializers themselves, but neither takes a model
whose quantization parameters were trained in PyTorch, hence this small pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# onnx is imported where it is used: importing it costs about 1 s (ml_dtypes), which every run and
# `compress validate` paid when these modules were imported
if TYPE_CHECKING:
    import onnx


def _quantize(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_to_even(w / scale) + zero), per tensor or along ``axis``."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * w.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    info = np.iinfo(zero.dtype)
    return np.clip(np.rint(w / scale) + zero.astype(np.int64), info.min, info.max).astype(zero.dtype)


def store_int8_weights(path: Path) -> int:
    """Rewrite ``path`` with constant weights stored quantized; returns how many tensors were folded."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}  # shared constants

    def const(name: str) -> onnx.TensorProto | None:
        while name not in inits and name in identity:
            name = identity[name]
        return inits.get(name)

    folded, drop = 0, []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        tensors = [const(n) for n in node.input[:3]]
        if any(t is None for t in tensors):
            continue
        w, scale, zero = (numpy_helper.to_array(t) for t in tensors)  # type: ignore[arg-type]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q = _quantize(w.astype(np.float32), scale.astype(np.float32), zero, axis if axis >= 0 else axis + w.ndim)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        drop.append(node)
        folded += 1
    for node in drop:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity" and not set(n.output) & used]:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in list(graph.initializer):
        if t.name not in used:
            graph.initializer.remove(t)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return folded
