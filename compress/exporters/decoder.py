"""Causal LMs to ONNX with a KV cache, and running such a graph: prefill, greedy decoding, perplexity.

The graph takes ``input_ids (batch, sequence)``, ``attention_mask (batch, past + sequence)`` and, per layer,
``past.<i>.key`` / ``past.<i>.value`` ``(batch, kv_heads, past, head_dim)``; it returns ``logits (batch,
sequence, vocabulary)`` and ``present.<i>.key`` / ``present.<i>.value`` with the new tokens appended. Positions
continue from the past length. One graph serves the prompt (prefill: an empty past) and every decode step (one
token, the cache of the previous call): the layout ONNX Runtime GenAI, Optimum and onnxruntime's own LLM
benchmarks use. Exported with the TorchScript exporter through Hugging Face's `DynamicCache`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from compress.artifacts import Artifact
from compress.data.dataset import DataBundle
from compress.errors import ExportError
from compress.models.bert import use_eager_attention
from compress.models.task_model import TaskModel

if TYPE_CHECKING:
    from compress.evaluation import GenerationCheck, ParityConfig

log = logging.getLogger("compress")
Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # a session: feeds -> every output, in graph order


def cache_shape(module: nn.Module) -> tuple[int, list[int], int]:
    """(layers, key/value heads of each layer, head_dim) of a Hugging Face causal LM's KV cache (a pruned layer
    has fewer heads than the config says)."""
    from compress.models.decoder import decoder_layers

    cfg: Any = module.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = [int(layer.self_attn.k_proj.out_features // head_dim) for layer in decoder_layers(module)]
    return len(kv), kv, int(head_dim)


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


class _WithCache(nn.Module):
    """The model as a function of flat tensors: (ids, mask, *past) -> (logits, *present)."""

    def __init__(self, module: nn.Module, layers: int) -> None:
        super().__init__()
        self.module, self.layers = module, layers
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name goes in 5.40); older releases lack it
        self.cache_key = "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor) -> tuple:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)],
                             config=self.module.config)  # type: ignore[arg-type]  # fmt: skip
        start = past[0].shape[2]
        positions = (torch.arange(input_ids.shape[1]) + start).unsqueeze(0).expand(input_ids.shape[0], -1)
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                          use_cache=True, **{self.cache_key: cache})  # fmt: skip
        presents: list[torch.Tensor] = []
        layer: Any
        for layer in cache.layers:  # updated in place with this call's keys and values
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def export_decoder_onnx(model: TaskModel, path: Path, *, opset: int) -> None:
    """Export a causal LM with its KV cache and check the file (`onnx.checker`)."""
    import onnx

    module = model.module.eval()
    use_eager_attention(module)
    layers, kv, dim = cache_shape(module)
    names_in, names_out = io_names(layers)
    ids = torch.randint(0, max(2, model.num_labels), (1, 2))
    past = [torch.zeros(1, kv[i // 2], 3, dim) for i in range(2 * layers)]  # traced with a past; empty runs too
    mask = torch.ones(1, 5, dtype=torch.long)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "total"},
                                       "logits": {0: "batch", 1: "sequence"}}  # fmt: skip
    axes |= {n: {0: "batch", 2: "past"} for n in names_in[2:]} | {n: {0: "batch", 2: "total"} for n in names_out[1:]}
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_WithCache(module, layers).eval(), (ids, mask, *past), str(path), input_names=names_in,
                              output_names=names_out, dynamic_axes=axes, opset_version=opset, dynamo=False)  # fmt: skip
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one clear error
        path.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"the causal LM {type(module).__name__} does not export to ONNX with a KV cache (opset "
                          f"{opset}): {type(exc).__name__}: {first}") from None  # fmt: skip


class CachedDecoder:
    """Runs a KV-cache graph (any runtime's session as ``run``): the prompt, then one token at a time."""

    def __init__(self, run: Run, layers: int, kv_heads: list[int], head_dim: int) -> None:
        self.run, self.layers, self.kv_heads, self.head_dim = run, layers, kv_heads, head_dim
        self.past_names = io_names(layers)[0][2:]

    def empty(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads[i // 2], 0, self.head_dim), np.float32)
                for i in range(len(self.past_names))]  # fmt: skip

    def forward(self, ids: np.ndarray, mask: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list]:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        feeds |= dict(zip(self.past_names, cache, strict=True))
        out = self.run(feeds)
        return out[0], out[1:]

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation of ``prompt``: the tokens, and the logits of each step (prefill's last first)."""
        ids = np.array([prompt], np.int64)
        logits, cache = self.forward(ids, np.ones_like(ids), self.empty(1))
        steps, tokens, total = [logits[0, -1]], [], len(prompt)
        for _ in range(new_tokens):
            token = int(steps[-1].argmax())
            tokens.append(token)
            total += 1
            logits, cache = self.forward(np.array([[token]]), np.ones((1, total), np.int64), cache)
            steps.append(logits[0, -1])
        return tokens, steps


def decoder_artifacts(
    model: TaskModel, name: str, params: int | None, data: DataBundle, out_dir: Path, *, opset: int,
    int8: bool, int4: bool, parity: ParityConfig, check: GenerationCheck, eval_batch_size: int,
    teacher: np.ndarray | None, stage: str = "export",
) -> list[Artifact]:  # fmt: skip
    """A causal LM's deployable graphs: fp32 with its KV cache (parity over cached decode steps), int8 dynamic and
    4-bit weight-only (MatMulNBits) of it; each with perplexity, next-token accuracy and top-1 agreement with the
    teacher (``teacher``: its `teacher_picks`) measured on onnxruntime over the test split, and greedy completions
    of the fixed prompts."""
    from compress.evaluation import decoder_parity
    from compress.quant import nbits
    from compress.quant import ort as ortq

    fp32_path = out_dir / f"{name}.onnx"
    export_decoder_onnx(model, fp32_path, opset=opset)
    checked = decoder_parity(model, fp32_path, data.test, parity, check.parity_steps, name)
    hidden = int(model.module.config.hidden_size)  # type: ignore[union-attr,arg-type]
    variants: list[tuple[str, str, Path]] = [("fp32", name, fp32_path)]
    if int8:
        path = out_dir / f"{name}.int8-dynamic.onnx"
        ortq.quantize_dynamic(fp32_path, path, ["MatMul", "Gemm"])
        variants.append(("int8-dynamic", f"{name}.onnx", path))
    if int4:
        path = out_dir / f"{name}.int4.onnx"
        ortq.quantize_4bit_rtn(fp32_path, path, block_size=nbits.block_size(hidden))
        variants.append(("int4", f"{name}.onnx", path))
    out, fp32_picks = [], None
    for precision, parent, path in variants:
        art, picks = measure_decoder_graph(model, path, parent, precision, params, data, check, eval_batch_size,
                                           teacher, stage, fp32_picks)  # fmt: skip
        if fp32_picks is None:
            fp32_picks = picks
            art.metrics |= checked
        out.append(art.finalize())
    return out


def measure_decoder_graph(
    model: TaskModel, path: Path, parent: str, precision: str, params: int | None, data: DataBundle,
    check: GenerationCheck, eval_batch_size: int, teacher: np.ndarray | None, stage: str,
    fp32_picks: np.ndarray | None = None, runtime: str = "onnxruntime",
) -> tuple[Artifact, np.ndarray]:  # fmt: skip
    """The artifact of one KV-cache graph: perplexity, next-token accuracy, top-1 agreement with the teacher (and
    with the fp32 graph's picks, when given) on onnxruntime over the test split, the greedy completions of the
    fixed prompts, and the low-bit operators it holds (an ExecuTorch program on ExecuTorch: ``runtime``). Also its
    argmax token of every counted position."""
    from compress.evaluation import completions, decoder_metrics, decoder_runner
    from compress.quant import ort as ortq

    metrics, picks = decoder_metrics(runtime, path, model.module, data.test, eval_batch_size,
                                     f"perplexity {path.name}", teacher)  # fmt: skip
    if fp32_picks is not None:
        metrics["top1_agreement_with_fp32"] = float((picks == fp32_picks).mean()) if len(picks) else 1.0
    runner = decoder_runner(runtime, path, model.module)
    said = completions(runner, model.tokenizer, check) if model.tokenizer else []
    layers, kv, dim = cache_shape(model.module)
    info: dict = {"kv_cache": {"layers": layers, "kv_heads": kv, "head_dim": dim}, "completions": said}
    if precision != "fp32" and runtime != "executorch":
        info["integer_ops"] = ortq.integer_ops(path)
    kind: Literal["onnx", "pte"] = "pte" if runtime == "executorch" else "onnx"
    art = Artifact(path.name, kind, path, stage, parent=parent, precision=precision, params=params,
                   metrics=metrics, info=info)  # fmt: skip
    log.info("%s: perplexity %.3f, next-token accuracy %.4f (%s, test split)", path.name,
             metrics["perplexity"], metrics["next_token_accuracy"], runtime)  # fmt: skip
    return art, picks
