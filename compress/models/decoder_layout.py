"""Where a causal LM's decoder layer keeps its attention and MLP weights: one layout per module arrangement.

DPHuBERT's masks, the physical pruning and the per-layer resize on load work on canonical matrices, whatever the
architecture: ``q``, ``k``, ``v`` (rows: heads x head size), ``o`` (columns: the same), ``up`` (and ``gate`` for a
gated MLP; rows: units) and ``down`` (columns: units), each as a ``(weight [out, in], bias)`` pair. A layout reads
them from a layer and writes new ones into it (new modules of the layer's own kinds, and the per-layer head counts
the architecture's attention reads), so that a layer with fewer heads or units runs as the original code.

- LLaMA-style (LLaMA, Mistral, Qwen2/3, Gemma 1-3, OLMo, Granite, SmolLM): ``self_attn.{q,k,v,o}_proj``, a gated
  ``mlp.{gate,up,down}_proj``; the attention reshapes with ``-1`` heads, nothing else to set.
- OPT: ``self_attn.{q,k,v}_proj`` and ``out_proj``, a plain MLP ``fc1`` / ``fc2`` on the layer, biases;
  ``self_attn.num_heads`` is per layer.
- GPT-2: transposed ``Conv1D`` modules, query / key / value fused in ``attn.c_attn``, a plain MLP ``mlp.c_fc`` /
  ``mlp.c_proj``, biases; ``attn.num_heads`` and ``attn.split_size`` are per layer.
- Phi-3: query / key / value fused in ``self_attn.qkv_proj``, gate and up fused in ``mlp.gate_up_proj`` (gate rows
  first); the attention splits the fused projection at ``self.config.num_attention_heads`` and
  ``self.num_key_value_heads``, so a resized layer gets its own view of the config (`LayerConfig`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from compress.errors import ModelError

Weights = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _read_linear(module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


class DecoderLayout(ABC):
    """One arrangement of a decoder layer's attention and MLP modules."""

    name: str
    gated: bool  # a gated (SwiGLU / GeGLU) MLP: units have a gate row too

    @abstractmethod
    def matches(self, layer: nn.Module) -> bool: ...

    @abstractmethod
    def outputs(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The attention output projection (its input: heads x head size) and the MLP's (its input: units)."""

    @abstractmethod
    def read(self, layer: nn.Module) -> Weights: ...

    @abstractmethod
    def write(self, layer: nn.Module, weights: Weights, *, heads: int) -> None:
        """New projections holding ``weights``, and the layer's per-layer head counts (``heads`` query heads)."""


class LlamaLayout(DecoderLayout):
    name, gated = "llama", True

    def matches(self, layer: nn.Module) -> bool:
        a, m = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        return all(isinstance(getattr(a, f"{p}_proj", None), nn.Linear) for p in "qkvo") and all(
            isinstance(getattr(m, f"{p}_proj", None), nn.Linear) for p in ("gate", "up", "down"))  # fmt: skip

    def outputs(self, layer: Any) -> tuple[nn.Module, nn.Module]:
        return layer.self_attn.o_proj, layer.mlp.down_proj

    def read(self, layer: Any) -> Weights:
        a, m = layer.self_attn, layer.mlp
        return {"q": _read_linear(a.q_proj), "k": _read_linear(a.k_proj), "v": _read_linear(a.v_proj),
                "o": _read_linear(a.o_proj), "gate": _read_linear(m.gate_proj), "up": _read_linear(m.up_proj),
                "down": _read_linear(m.down_proj)}  # fmt: skip

    def write(self, layer: Any, weights: Weights, *, heads: int) -> None:
        a, m = layer.self_attn, layer.mlp
        a.q_proj, a.k_proj, a.v_proj, a.o_proj = (_linear(*weights[n]) for n in "qkvo")
        m.gate_proj, m.up_proj, m.down_proj = (_linear(*weights[n]) for n in ("gate", "up", "down"))


class OptLayout(DecoderLayout):
    name, gated = "opt", False

    def matches(self, layer: nn.Module) -> bool:
        a = getattr(layer, "self_attn", None)
        return all(isinstance(getattr(a, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "out_proj")) \
            and all(isinstance(getattr(layer, n, None), nn.Linear) for n in ("fc1", "fc2"))  # fmt: skip

    def outputs(self, layer: Any) -> tuple[nn.Module, nn.Module]:
        return layer.self_attn.out_proj, layer.fc2

    def read(self, layer: Any) -> Weights:
        a = layer.self_attn
        names = {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.out_proj, "up": layer.fc1, "down": layer.fc2}
        return {name: _read_linear(module) for name, module in names.items()}

    def write(self, layer: Any, weights: Weights, *, heads: int) -> None:
        a = layer.self_attn
        a.q_proj, a.k_proj, a.v_proj, a.out_proj = (_linear(*weights[n]) for n in "qkvo")
        layer.fc1, layer.fc2 = _linear(*weights["up"]), _linear(*weights["down"])
        a.num_heads = heads  # OPT's attention views its projections as (batch, -1, num_heads, head_dim)


class Gpt2Layout(DecoderLayout):
    """GPT-2's transposed `Conv1D` modules (weight ``[in, out]``), query, key and value fused in ``c_attn``."""

    name, gated = "gpt2", False

    @staticmethod
    def _conv1d() -> type[nn.Module]:
        from transformers.pytorch_utils import Conv1D

        return Conv1D

    def matches(self, layer: nn.Module) -> bool:
        conv = self._conv1d()
        a, m = getattr(layer, "attn", None), getattr(layer, "mlp", None)
        return all(isinstance(getattr(x, n, None), conv) for x, n in ((a, "c_attn"), (a, "c_proj"), (m, "c_fc"),
                                                                     (m, "c_proj")))  # fmt: skip

    def outputs(self, layer: Any) -> tuple[nn.Module, nn.Module]:
        return layer.attn.c_proj, layer.mlp.c_proj

    @staticmethod
    def _read(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:  # Conv1D: weight [in, out]
        return module.weight.detach().t(), None if module.bias is None else module.bias.detach()

    def _new(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        out: Any = self._conv1d()(weight.shape[0], weight.shape[1])  # (outputs, inputs)
        with torch.no_grad():
            out.weight.copy_(weight.t())
            if bias is not None:
                out.bias.copy_(bias)
        return out

    def read(self, layer: Any) -> Weights:
        w, b = self._read(layer.attn.c_attn)
        q, k, v = w.chunk(3, dim=0)
        qb, kb, vb = (None, None, None) if b is None else b.chunk(3)
        return {"q": (q, qb), "k": (k, kb), "v": (v, vb), "o": self._read(layer.attn.c_proj),
                "up": self._read(layer.mlp.c_fc), "down": self._read(layer.mlp.c_proj)}  # fmt: skip

    def write(self, layer: Any, weights: Weights, *, heads: int) -> None:
        a, m = layer.attn, layer.mlp
        qkv = torch.cat([weights[n][0] for n in "qkv"])
        bias = None if weights["q"][1] is None else torch.cat([weights[n][1] for n in "qkv"])  # type: ignore[misc]
        a.c_attn, a.c_proj = self._new(qkv, bias), self._new(*weights["o"])
        m.c_fc, m.c_proj = self._new(*weights["up"]), self._new(*weights["down"])
        a.num_heads, a.split_size = heads, weights["q"][0].shape[0]  # GPT-2 splits c_attn's output at split_size


class LayerConfig:
    """One layer's view of the model's config: ``num_attention_heads`` its own, every other attribute read through
    to the model's config (so that a later change there, such as the attention implementation, still applies).
    For attentions that read their head count from ``self.config`` (Phi-3)."""

    def __init__(self, base: Any, heads: int) -> None:
        self.base, self.num_attention_heads = base, heads

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)


class Phi3Layout(DecoderLayout):
    """Phi-3's fused ``qkv_proj`` (query rows, then key, then value) and ``gate_up_proj`` (gate rows, then up)."""

    name, gated = "phi3", True

    def matches(self, layer: nn.Module) -> bool:
        a, m = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        return all(isinstance(getattr(x, n, None), nn.Linear) for x, n in ((a, "qkv_proj"), (a, "o_proj"),
                                                                           (m, "gate_up_proj"), (m, "down_proj")))

    def outputs(self, layer: Any) -> tuple[nn.Module, nn.Module]:
        return layer.self_attn.o_proj, layer.mlp.down_proj

    def read(self, layer: Any) -> Weights:
        a, m = layer.self_attn, layer.mlp
        w, b = _read_linear(a.qkv_proj)
        q_rows, kv_rows = a.config.num_attention_heads * a.head_dim, a.num_key_value_heads * a.head_dim
        sizes = [q_rows, kv_rows, w.shape[0] - q_rows - kv_rows]
        q, k, v = w.split(sizes)
        qb, kb, vb = (None, None, None) if b is None else b.split(sizes)
        g, gb = _read_linear(m.gate_up_proj)
        gate, up = g.chunk(2)
        gate_b, up_b = (None, None) if gb is None else gb.chunk(2)
        return {"q": (q, qb), "k": (k, kb), "v": (v, vb), "o": _read_linear(a.o_proj), "gate": (gate, gate_b),
                "up": (up, up_b), "down": _read_linear(m.down_proj)}  # fmt: skip

    @staticmethod
    def _fused(weights: Weights, names: tuple[str, ...]) -> nn.Linear:
        bias = None if weights[names[0]][1] is None else torch.cat([weights[n][1] for n in names])  # type: ignore[misc]
        return _linear(torch.cat([weights[n][0] for n in names]), bias)

    def write(self, layer: Any, weights: Weights, *, heads: int) -> None:
        a, m = layer.self_attn, layer.mlp
        a.qkv_proj, a.o_proj = self._fused(weights, ("q", "k", "v")), _linear(*weights["o"])
        m.gate_up_proj, m.down_proj = self._fused(weights, ("gate", "up")), _linear(*weights["down"])
        base = a.config.base if isinstance(a.config, LayerConfig) else a.config
        a.config = base if heads == base.num_attention_heads else LayerConfig(base, heads)
        a.num_key_value_heads = weights["k"][0].shape[0] // a.head_dim


LAYOUTS: tuple[DecoderLayout, ...] = (LlamaLayout(), OptLayout(), Gpt2Layout(), Phi3Layout())


def find_layout(layer: nn.Module) -> DecoderLayout | None:
    return next((layout for layout in LAYOUTS if layout.matches(layer)), None)


def layout_of(layer: nn.Module, where: str = "the model") -> DecoderLayout:
    """The layout of ``layer``, or a clear error naming the ones there are."""
    layout = find_layout(layer)
    if layout is None:
        raise ModelError(
            f"{where}: decoder layer {type(layer).__name__} has none of the module layouts that per-layer pruning "
            f"reads ({', '.join(x.name for x in LAYOUTS)}: separate or fused query/key/value projections and an "
            "MLP with its own output projection)."
        )
    return layout
