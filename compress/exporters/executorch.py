"""PyTorch -> ExecuTorch program (.pte) delegated to XNNPACK, the CPU backend ExecuTorch ships for Android, iOS
and Linux boards; fp32, or int8 through XNNPACK's own PT2E quantizer (dynamically quantized activations,
per-channel int8 weights). Shapes are static (batch and sequence fixed at export), as mobile deployments are.

Hugging Face encoders are exported with the attention mask turned into the additive 4-D mask in the wrapper:
transformers' own mask construction indexes with tensors that PT2E quantization breaks, and the 4-D form is
what the model computes anyway (checked: identical logits).

Causal LMs are exported through transformers' own `TorchExportableModuleForDecoderOnlyLM` with a static cache
(batch 1, ``max_cache_len`` positions held inside the program as mutable buffers): ``(input_ids (1, n),
cache_position (n,)) -> logits``, the prompt length dynamic, the layout ExecuTorch's own LLM runners use. fp32
only: XNNPACK's PT2E int8 flow is not applied to a program that mutates its cache."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from compress.artifacts import Artifact
from compress.config import Strict
from compress.data.dataset import DataBundle
from compress.errors import ExportError, RuntimeMissingError
from compress.evaluation import onnx_logits, predictor
from compress.models.bert import use_eager_attention
from compress.models.task_model import TaskModel
from compress.training.evaluate import predict_logits

log = logging.getLogger("compress")
EXTRA = "executorch"


class _Program(nn.Module):
    """Positional tensors in, logits out; text models get the additive attention mask built here."""

    def __init__(self, model: TaskModel) -> None:
        super().__init__()
        self.module = model.module
        self.additive_mask = model.spec_of_inputs().additive_mask
        self.names = model.input_names()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.additive_mask:
            ids, mask = inputs
            additive = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
            return self.module(input_ids=ids, attention_mask=additive).logits  # type: ignore[no-any-return]
        return self.model.logits(dict(zip(self.names, inputs, strict=True)))


def _libs() -> Any:
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise RuntimeMissingError(
            f"ExecuTorch export needs the executorch package ({exc}): pip install 'edge-compress[{EXTRA}]'."
        ) from None
    return XnnpackPartitioner, to_edge_transform_and_lower


def export_pte(model: TaskModel, args: tuple, path: Path, *, int8: bool) -> dict[str, int]:
    """Write ``path``; returns operator counts: how many ran delegated to XNNPACK and which stayed portable."""
    partitioner, lower = _libs()
    model.module.eval()
    use_eager_attention(model.module)
    program = _Program(model).eval()
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            exported = torch.export.export(program, args)
            if int8:
                exported = torch.export.export(_quantize(exported.module(), args), args)
            edge = lower(exported, partitioner=[partitioner()])
            counts = _delegation(edge.exported_program().graph)
            buffer = edge.to_executorch().buffer
    except RuntimeMissingError:
        raise
    except Exception as exc:  # noqa: BLE001 - export/lowering failures become one clear error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(
            f"the {model.kind} model ({type(model.module).__name__}) does not export to ExecuTorch/XNNPACK"
            f"{' int8' if int8 else ''}: {type(exc).__name__}: {first}"
        ) from None
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer)
    tmp.replace(path)  # never a half-written program
    return counts


def _quantize(module: nn.Module, args: tuple) -> nn.Module:
    """XNNPACK's PT2E quantizer: int8 per-channel weights, int8 activations quantized at run time."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(module, quantizer)  # type: ignore[arg-type]
    prepared(*args)
    return convert_pt2e(prepared)  # type: ignore[no-any-return]


def _delegation(graph: torch.fx.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        key = "xnnpack_delegate" if "call_delegate" in name else name.split(".")[0]
        if key in ("getitem",):
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


# ---- checked artifacts: the programs `export` writes, compared with PyTorch, accuracy on ExecuTorch ------------
PtePrecision = Literal["fp32", "int8"]
PRECISIONS: tuple[PtePrecision, ...] = ("fp32", "int8")


class ExecuTorchOptions(Strict):
    """ExecuTorch programs delegated to XNNPACK (the mobile CPU backend), static shapes."""

    precisions: list[PtePrecision] = Field(
        default_factory=lambda: list(PRECISIONS),
        min_length=1,
        description="`fp32`, and `int8` (XNNPACK's PT2E quantizer: per-channel int8 weights, activations "
        "quantized at run time).",
    )
    batch: int = Field(1, gt=0, description="Batch size the program is exported for (default: `deploy.batch`, else 1).")
    sequence: int = Field(
        128,
        gt=0,
        description="Sequence length of text programs, inputs padded to it (default: `deploy.sequence`, else 128).",
    )
    max_abs_diff: float = Field(1e-3, gt=0, description="fp32 parity: max |logit difference| against PyTorch.")
    min_top1_agreement: float = Field(
        0.98, gt=0, le=1, description="int8 parity: top-1 agreement with the PyTorch model on the test split."
    )


def pte_artifacts(
    model: TaskModel, name: str, params: int | None, opts: ExecuTorchOptions, data: DataBundle, out_dir: Path,
    eval_batch_size: int,
) -> list[Artifact]:  # fmt: skip
    sample = next(iter(data.test.loader(max(2, opts.batch))))
    args = model.spec_of_inputs().static_example(opts.batch, opts.sequence, sample)
    ref = predict_logits(model, data.test, eval_batch_size, f"{name} reference logits").numpy()
    out = []
    for precision in opts.precisions:
        suffix = "xnnpack" if precision == "fp32" else "xnnpack-int8"
        path = out_dir / f"{name}.{suffix}.pte"
        ops = export_pte(model, args, path, int8=precision == "int8")
        logits = onnx_logits(predictor("executorch", path), data.test, eval_batch_size, f"accuracy {path.name}")
        diff = float(np.abs(logits - ref).max())
        agreement = float((logits.argmax(-1) == ref.argmax(-1)).mean())
        bad = diff > opts.max_abs_diff if precision == "fp32" else agreement < opts.min_top1_agreement
        if bad:
            path.unlink()
            raise ExportError(
                f"{path.name}: ExecuTorch output differs from PyTorch (max |logit diff| {diff:.2e}, top-1 "
                f"agreement {agreement:.3f}; allowed {opts.max_abs_diff:g} / {opts.min_top1_agreement:g})."
            )
        metrics = {"accuracy": float((logits.argmax(-1) == data.test.labels.numpy()).mean()),
                   "parity_max_abs_diff": diff, "parity_top1_agreement": agreement}  # fmt: skip
        art = Artifact(path.name, "pte", path, "export", parent=name,
                       precision="fp32" if precision == "fp32" else "int8-dynamic", params=params, metrics=metrics,
                       info={"backend": "xnnpack", "operators": ops, "shape": list(args[0].shape)})  # fmt: skip
        delegated = ops.get("xnnpack_delegate", 0)
        portable = {k: v for k, v in ops.items() if k != "xnnpack_delegate"}
        log.info("%s: accuracy %.4f (ExecuTorch), %d XNNPACK subgraphs, %d ops left to portable kernels%s",
                 path.name, metrics["accuracy"], delegated, sum(portable.values()),
                 f" ({', '.join(sorted(portable))})" if portable else "")  # fmt: skip
        out.append(art.finalize())
    return out


# ---- causal LMs: a static KV cache inside the program ---------------------------------------------------------------
def export_decoder_pte(model: TaskModel, path: Path, *, max_cache_len: int) -> dict[str, int]:
    """Write a causal LM's program with a static cache of ``max_cache_len`` positions (fp32, XNNPACK); returns
    operator counts as `export_pte` does."""
    partitioner, lower = _libs()
    from transformers import GenerationConfig
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    module: Any = model.module.eval()
    module.generation_config = GenerationConfig(
        use_cache=True, cache_implementation="static", max_length=max_cache_len,
        cache_config={"batch_size": 1, "max_cache_len": max_cache_len},
    )  # fmt: skip
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            wrapper = TorchExportableModuleForDecoderOnlyLM(module, batch_size=1, max_cache_len=max_cache_len)
            sequence = torch.export.Dim("sequence", min=1, max=max_cache_len)
            ids = torch.zeros(1, 3, dtype=torch.long)
            # strict (TorchDynamo) tracing: the non-strict trace of the cache's in-place updates does not lower
            exported = wrapper.export(input_ids=ids, cache_position=torch.arange(3), strict=True,
                                      dynamic_shapes={"input_ids": {1: sequence}, "cache_position": {0: sequence}})
            edge = lower(exported, partitioner=[partitioner()])
            counts = _delegation(edge.exported_program().graph)
            buffer = edge.to_executorch().buffer
    except Exception as exc:  # noqa: BLE001 - export/lowering failures become one clear error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"the causal LM {type(module).__name__} does not export to ExecuTorch/XNNPACK with a static "
                          f"cache: {type(exc).__name__}: {first}") from None  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buffer)
    tmp.replace(path)
    return counts
