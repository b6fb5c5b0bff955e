"""Quantization-aware training with NNCF's current PyTorch API: `nncf.quantize` inserts fake quantizers
(initialised by post-training calibration) into the model, the model trains with them, `nncf.strip` turns them
into torch fake-quantize ops that export to ONNX as QuantizeLinear/DequantizeLinear pairs.

NNCF, not our own fake-quant modules: it places quantizers where the target runtimes fuse them into integer
kernels (weights per channel, activations before every MatMul/Conv input), calibrates them, and makes the scales
trainable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.errors import QuantizationError

if TYPE_CHECKING:
    from compress.models.task_model import TaskModel

log = logging.getLogger("compress")

Batch = dict[str, torch.Tensor]
Exporter = Callable[..., None]  # (model, sample, path, *, opset): writes the fp32 ONNX file


@dataclass(frozen=True)
class QatScheme:
    """Bit widths and granularity. onnxruntime's CPU integer kernels take 8-bit weights and activations."""

    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    transformer: bool = False  # NNCF's Transformer preset (SmoothQuant, which ops get activation quantizers)


WEIGHT_BITS = (4, 8)  # 4: weight-only, onnxruntime MatMulNBits; 8: W8A8 QDQ, integer MatMul/Conv kernels
ACTIVATION_BITS = (8,)


# NNCF's CPU fake-quantization kernels: `compiled` (its C++ extension, built on first use) or `torch` (its reference
# implementation in torch operations: no compiler, no build; what the test suite uses)
KERNELS_ENV = "COMPRESS_NNCF_KERNELS"


def _nncf() -> Any:
    # NNCF compiles its CPU fake-quantize kernels (a C++ extension, g++ and ninja) on first use and gives up
    # after 60 s; a fresh machine under load can take longer.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    try:
        import nncf
    except ImportError as exc:  # pragma: no cover - nncf is a core dependency
        raise QuantizationError(f"quantization-aware training needs NNCF: pip install nncf ({exc})") from None
    kernels = os.environ.get(KERNELS_ENV, "compiled")
    if kernels == "torch":
        # NNCF's own fallback where no compiler is found: the same fake-quantization in torch operations, without
        # the C++ build (about a minute of one core in every new virtual environment)
        from nncf.torch.quantization import extensions, reference

        extensions.QuantizedFunctionsCPU._loaded_namespace = reference.ReferenceQuantizedFunctions
    elif kernels != "compiled":
        raise QuantizationError(f"{KERNELS_ENV}={kernels!r}: expected 'compiled' (the default) or 'torch'")
    return nncf


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm that directly follows a Conv folded into it (eval statistics), in place;
    the pairs are found by tracing the forward with torch.fx, the module keeps its class.

    Needed for integer kernels: onnxruntime turns ``DQ -> Conv -> Q`` into QLinearConv, but a Conv whose output
    goes to a BatchNorm stays a float Conv between DequantizeLinear nodes. A model torch.fx cannot trace keeps
    its BatchNorms (the export check then names the layers left in float)."""
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if not any(isinstance(m, norms) for m in module.modules()):
        return module
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure: quantize unfolded
        log.warning("could not trace %s to fold BatchNorm into Conv (%s); those Convs may stay float",
                    type(module).__name__, type(exc).__name__)  # fmt: skip
        return module
    modules = dict(module.named_modules())
    module.eval()
    for node in graph.nodes:
        prev = node.args[0] if node.op == "call_module" and node.args else None
        if (
            isinstance(prev, torch.fx.Node)
            and prev.op == "call_module"
            and isinstance(modules.get(str(node.target)), norms)
            and isinstance(modules.get(str(prev.target)), nn.Conv1d | nn.Conv2d | nn.Conv3d)
            and len(prev.users) == 1
        ):
            conv, bn = modules[str(prev.target)], modules[str(node.target)]
            _set(module, str(prev.target), fuse_conv_bn_eval(conv, bn))  # type: ignore[arg-type]
            _set(module, str(node.target), nn.Identity())
    return module


def prepare(module: nn.Module, calibration: list[Batch], scheme: QatScheme, *, ignored_types: list[str]) -> nn.Module:
    """``module`` (BatchNorms folded) with trainable fake quantizers, ranges calibrated on ``calibration``."""
    if scheme.weight_bits == 4:
        return _prepare_4bit(module, calibration, ignored_types)
    if scheme.weight_bits not in WEIGHT_BITS or scheme.activation_bits not in ACTIVATION_BITS:
        raise QuantizationError(
            f"weights.bits={scheme.weight_bits}, activations.bits={scheme.activation_bits}: supported are "
            f"weights {list(WEIGHT_BITS)}, activations {list(ACTIVATION_BITS)}."
        )
    nncf = _nncf()
    from nncf.common.logging import nncf_logger
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    nncf_logger.setLevel(logging.WARNING)  # one INFO line per operation it leaves alone

    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=scheme.per_channel)
    )
    module = fold_batchnorm(module.eval())
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantized = nncf.quantize(
                module,
                nncf.Dataset(calibration),
                model_type=nncf.ModelType.TRANSFORMER if scheme.transformer else None,
                subset_size=len(calibration),  # NNCF counts dataset items: our batches
                ignored_scope=nncf.IgnoredScope(types=ignored_types, validate=False),
                advanced_parameters=advanced,
            )
    except Exception as exc:  # noqa: BLE001 - NNCF's own errors name the operation it could not handle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QuantizationError(
            f"NNCF could not insert quantizers into {type(module).__name__}: {type(exc).__name__}: {first}"
        ) from None
    return quantized


def _prepare_4bit(module: nn.Module, calibration: list[Batch], ignored_types: list[str]) -> nn.Module:
    """Weight-only symmetric int4 with one trainable scale per output channel (NNCF's `compress_weights` in
    fake-quantize format: its only trainable 4-bit form on PyTorch; group-wise scales are not supported there).
    Every Linear is 4-bit (``all_layers``), not NNCF's default of keeping the first and last layers at 8 bits:
    the ONNX writer has one 4-bit format."""
    nncf = _nncf()
    from nncf.common.logging import nncf_logger

    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.compress_weights(
                module.eval(),
                mode=nncf.CompressWeightsMode.INT4_SYM,
                ratio=1.0,
                group_size=-1,
                all_layers=True,
                dataset=nncf.Dataset(calibration),
                subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(types=ignored_types, validate=False),
                compression_format=nncf.CompressionFormat.FQ,
            )
    except Exception as exc:  # noqa: BLE001 - NNCF's own errors name the operation it could not handle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise QuantizationError(
            f"NNCF could not insert 4-bit weight quantizers into {type(module).__name__}: {type(exc).__name__}: {first}"
        ) from None


_HOOK = re.compile(r"post_hooks\.(?P<op>.+)__\d+\.\d+$")


def weight_steps(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter path -> quantization step per output channel of every weight quantizer, read from NNCF's hook
    names (``...post_hooks.bert:encoder:...:dense:weight__0.0``). With symmetric levels [-8, 7] a stripped weight
    is ``q * step``."""
    steps = {}
    for name, quantizer in module.named_modules():
        match = _HOOK.search(name)
        if not match or not hasattr(quantizer, "scale"):
            continue
        param = match["op"].replace(":", ".")
        if not param.endswith(".weight"):
            continue
        scale = quantizer.scale.detach().abs() + quantizer.eps
        steps[param] = (scale / quantizer.level_high).reshape(-1).float()
    return steps


def quantizer_count(module: nn.Module) -> int:
    """Fake quantizers NNCF inserted (0 means nothing would be quantized)."""
    return sum(1 for m in module.modules() if type(m).__name__.endswith("Quantizer"))


def strip(module: nn.Module, example: Batch, *, in_place: bool = False) -> nn.Module:
    """The trained model with its quantizers as plain torch fake-quantize ops (exportable QDQ), or with
    ``in_place`` the fake-quantized weights baked into plain float weights (4-bit: NNCF cannot export 4-bit
    QDQ; `nbits.store_4bit_weights` writes them)."""
    nncf = _nncf()
    module.eval()
    fmt = nncf.StripFormat.IN_PLACE if in_place else nncf.StripFormat.NATIVE
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.strip(module, do_copy=True, strip_format=fmt, example_input=example)


def write_qdq(student: TaskModel, sample: Batch, path: Path, opset: int, export: Exporter) -> TaskModel:
    """8 bits: quantizers as torch fake-quantize ops, exported (by ``export``) as QDQ, constant weights stored in
    int8. Returns the fake-quantized model the file must match."""
    from compress.quant import qdq

    fake_quant = student.with_module(strip(student.module, student.inputs(sample)))
    export(fake_quant, sample, path, opset=opset)
    qdq.store_int8_weights(path)
    return fake_quant


def write_4bit(student: TaskModel, sample: Batch, path: Path, opset: int, export: Exporter) -> TaskModel:
    """4 bits: fake-quantized weights baked into the model, exported as fp32 by ``export`` (a logits graph, or a
    causal LM's KV-cache graph), then every 4-bit Linear rewritten as MatMulNBits holding the trained integers and
    steps. Returns the baked model the file must match."""
    from compress.quant import nbits

    steps = weight_steps(student.module)
    baked = student.with_module(strip(student.module, student.inputs(sample), in_place=True))
    try:
        weights = {p: (baked.module.get_parameter(p).detach().numpy(), s.numpy()) for p, s in steps.items()}
    except AttributeError as exc:
        msg = f"{path.name}: a 4-bit quantizer names no weight of the stripped model ({exc})"
        raise QuantizationError(msg) from None
    export(baked, sample, path, opset=opset)
    result = nbits.store_4bit_weights(path, weights)
    if len(result.converted) < len(weights):
        log.warning("%s: %d of %d 4-bit weights were not found in the ONNX graph", path.name,
                    len(weights) - len(result.converted), len(weights))  # fmt: skip
    return baked
