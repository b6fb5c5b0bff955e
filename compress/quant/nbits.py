"""4-bit weights as onnxruntime ``MatMulNBits`` nodes, written from the integers and scales NNCF trained.

onnxruntime's own ``MatMulNBitsQuantizer`` quantizes float weights itself (round-to-nearest, GPTQ, HQQ): given a
model trained with 4-bit fake quantization it would pick new block scales and throw the trained grid away. This
pass instead takes each weight already on its trained grid (``w = q * step``, ``q`` in [-8, 7], one ``step`` per
output channel) and stores exactly those integers, so the ONNX artifact computes what the trained model computed.

MatMulNBits layout (com.microsoft, onnxruntime >= 1.17): ``B`` uint8 ``[N, blocks, block_size / 2]``, two 4-bit
values per byte with the lower-index element in the low nibble, unsigned with implicit zero point 8; ``scales``
``[N * blocks]``. A per-channel step is repeated over the blocks of its row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# onnx is imported where it is used: importing it costs about 1 s (ml_dtypes), which every run and
# `compress validate` paid when these modules were imported
if TYPE_CHECKING:
    import onnx

from compress.errors import QuantizationError

LEVEL_LOW, LEVEL_HIGH = -8, 7
MAX_BLOCK = 128  # onnxruntime's default block size; larger blocks gain nothing for per-channel scales


@dataclass
class NBitsResult:
    converted: list[str] = field(default_factory=list)  # node names now MatMulNBits
    skipped: list[str] = field(default_factory=list)  # MatMul/Gemm with a constant weight left in float


def block_size(k: int) -> int:
    """Power of two >= 16, at most MAX_BLOCK; K is zero-padded to whole blocks."""
    size = 16
    while size < min(k, MAX_BLOCK):
        size *= 2
    return size


def to_integers(weight: np.ndarray, step: np.ndarray, name: str) -> np.ndarray:
    """``q`` with ``weight == q * step[:, None]``; an error when ``weight`` is not on that 4-bit grid."""
    q = np.rint(weight / step[:, None])
    if q.min() < LEVEL_LOW or q.max() > LEVEL_HIGH:
        raise QuantizationError(f"{name}: weight falls outside the 4-bit range [-8, 7] of its trained scale")
    err = np.abs(q * step[:, None] - weight).max()
    if err > 1e-4 * float(step.max()):
        raise QuantizationError(f"{name}: weight is not on its 4-bit grid (off by {err:.3g}); was it stripped?")
    return q.astype(np.int8)


def pack(q: np.ndarray, block: int) -> np.ndarray:
    """``q`` [N, K] in [-8, 7] as MatMulNBits ``B``: uint8 [N, blocks, block / 2]."""
    n, k = q.shape
    blocks = -(-k // block)
    u = np.full((n, blocks * block), 8, dtype=np.uint8)  # padding is q = 0
    u[:, :k] = (q.astype(np.int16) + 8).astype(np.uint8)
    pairs = u.reshape(n, blocks, block // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def unpack(b: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `pack` (tests)."""
    n = b.shape[0]
    u = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(n, -1)[:, :k]
    return u.astype(np.int16) - 8


def _key(a: np.ndarray) -> tuple[tuple[int, ...], str]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def _float_attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((a.f for a in node.attribute if a.name == name), default)


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def store_4bit_weights(path: Path, weights: dict[str, tuple[np.ndarray, np.ndarray]], *,
                       accuracy_level: int = 4) -> NBitsResult:  # fmt: skip
    """Rewrite ``path``: every MatMul / Gemm whose constant weight is one of ``weights`` (name -> (W [N, K] on
    its grid, step [N])) becomes MatMulNBits. Weights are matched by value, so the exporter's initializer names
    do not matter. ``accuracy_level`` 4 lets the CPU kernel quantize activations to int8 on the fly."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    by_value = {_key(w): (name, w, s) for name, (w, s) in weights.items()}

    def const(name: str) -> np.ndarray | None:
        while name not in inits and name in identity:
            name = identity[name]
        return numpy_helper.to_array(inits[name]) if name in inits else None

    result, new_nodes = NBitsResult(), []
    for node in graph.node:
        b = const(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        if b is None or b.ndim != 2:
            new_nodes.append(node)
            continue
        gemm = node.op_type == "Gemm"
        if gemm and (_int_attr(node, "transA", 0) or _float_attr(node, "alpha", 1.0) != 1.0
                     or _float_attr(node, "beta", 1.0) != 1.0):  # fmt: skip
            new_nodes.append(node)
            result.skipped.append(node.name)
            continue
        w = b if gemm and _int_attr(node, "transB", 0) else b.T  # [N, K]
        match = by_value.get(_key(w))
        if match is None:
            new_nodes.append(node)
            result.skipped.append(node.name)
            continue
        label, weight, step = match
        n, k = weight.shape
        block = block_size(k)
        blocks = -(-k // block)
        q = to_integers(weight, step, label)
        stem = f"{node.name or node.output[0]}_nbits"
        graph.initializer.extend([
            numpy_helper.from_array(pack(q, block), f"{stem}.B"),
            numpy_helper.from_array(np.repeat(step.astype(np.float32), blocks), f"{stem}.scales"),
        ])  # fmt: skip
        inputs = [node.input[0], f"{stem}.B", f"{stem}.scales"]
        if gemm and len(node.input) > 2 and node.input[2]:
            inputs += ["", "", node.input[2]]  # zero_points, g_idx, bias
        new_nodes.append(helper.make_node(
            "MatMulNBits", inputs, list(node.output), name=node.name, domain="com.microsoft",
            K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level,
        ))  # fmt: skip
        result.converted.append(node.name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {i for node in graph.node for i in node.input}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] not in used]:
        graph.node.remove(node)
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)
    onnx.save(model, str(path))
    return result
