"""Where a Hugging Face encoder layer keeps its attention and FFN weights: one layout per module arrangement.

DPHuBERT's masks, the physical pruning and the per-layer resize on load work on canonical projections whatever
the architecture: ``q``, ``k``, ``v`` (rows: heads x head size), ``o`` (columns: the same), ``up`` (rows: FFN
units) and ``down`` (columns: units), plus any other projection whose rows are heads (DeBERTa's relative-position
projections). A layout reads them from a layer, gives it new projections of a size, sets the per-layer head count
its attention reads, and replaces a block with nothing left (every head, or every unit, removed) by what that
block then computes: its output projection's bias (and, where the block holds it, its LayerNorm).

- BERT (BERT, RoBERTa, XLM-R, ELECTRA): ``attention.self.{query,key,value}``, ``attention.output.dense`` and
  ``.LayerNorm`` (post-LN inside the block), ``intermediate.dense``, ``output.dense`` and ``.LayerNorm``.
- DeBERTa-v2/v3: the same blocks with ``attention.self.{query,key,value}_proj`` and, where the config does not share
  them, ``pos_key_proj`` / ``pos_query_proj`` (rows: heads).
- DistilBERT: ``attention.{q,k,v,out}_lin``, ``ffn.lin1`` / ``ffn.lin2``; its LayerNorms sit on the layer
  (``sa_layer_norm``, ``output_layer_norm``), outside the blocks.
- ModernBERT (pre-LN): fused ``attn.Wqkv`` and GLU ``mlp.Wi`` (read as ``q``/``k``/``v`` and ``gate``/``up``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from compress.errors import ModelError

Weights = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


class RemovedBlock(nn.Module):
    """What stands in a layer's slot for a block with nothing left (see the three kinds below)."""


class RemovedAttention(RemovedBlock):
    """A BERT-style attention block with no heads left: ``LayerNorm(x + b)``, ``b`` the output projection's bias."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.LayerNorm(hidden_states + self.bias), None


class RemovedFFNOutput(RemovedBlock):
    """The output of a BERT-style FFN block with no units left: ``LayerNorm(x + b)`` (its intermediate is an
    Identity)."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.bias)


class BiasOnly(RemovedBlock):
    """A block with nothing left whose layer adds the residual and normalises itself (DistilBERT): the output
    projection's bias at every position (with ``None`` attention weights where the block is an attention)."""

    def __init__(self, hidden: int, attention: bool) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.attention = attention

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = self.bias.expand_as(hidden_states)
        return (out, None) if self.attention else out


def _ffn_units(module: nn.Module) -> int:
    units = getattr(module, "ffn_units", None)  # a replaced FFN (moefy's experts) counts its own units
    if units is not None:
        return int(units)
    return int(module.out_features)  # type: ignore[arg-type]


class EncoderLayout(ABC):
    """One arrangement of an encoder layer's attention and FFN modules."""

    name: str

    @abstractmethod
    def matches(self, layer: nn.Module) -> bool: ...

    @abstractmethod
    def projections(self, layer: Any) -> dict[str, nn.Module]:
        """``q``, ``k``, ``v``, ``o``, ``up``, ``down`` and any other head-row projection (present blocks only)."""

    # the layer attributes that hold a removed attention block and a removed FFN block (a `RemovedBlock`)
    attention_slot: str
    ffn_slot: str

    def attention_removed(self, layer: Any) -> bool:
        return isinstance(getattr(layer, self.attention_slot), RemovedBlock)

    def ffn_removed(self, layer: Any) -> bool:
        return isinstance(getattr(layer, self.ffn_slot), RemovedBlock)

    @abstractmethod
    def units(self, layer: Any) -> int:
        """The FFN's units (a moefied FFN's experts together)."""

    @abstractmethod
    def resize(self, layer: Any, config: Any, heads: int, units: int) -> None:
        """New, uninitialised projections for ``heads`` heads and ``units`` units; a zero removes the block."""

    def removed_blocks(self, layer: Any) -> tuple[nn.Module | None, nn.Module | None]:
        """The modules standing for a removed attention block and FFN block (None where the block is there): each
        has the output projection's ``bias``, and its ``LayerNorm`` where the block held one."""
        return (getattr(layer, self.attention_slot) if self.attention_removed(layer) else None,
                getattr(layer, self.ffn_slot) if self.ffn_removed(layer) else None)  # fmt: skip

    def outputs(self, layer: Any) -> tuple[nn.Module, nn.Module]:
        """The attention's output projection (its input: heads x head size) and the FFN's (its input: units)."""
        p = self.projections(layer)
        return p["o"], p["down"]

    def read(self, layer: Any) -> Weights:
        """Copies of the canonical projections' ``(weight [out, in], bias)`` (present blocks only)."""
        return {k: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())  # type: ignore[union-attr,operator]
                for k, m in self.projections(layer).items()}  # fmt: skip

    @torch.no_grad()
    def load(self, layer: Any, weights: Weights) -> None:
        """Copy ``weights`` into the layer's projections (already resized to their shapes)."""
        modules = self.projections(layer)
        for name, (w, b) in weights.items():
            modules[name].weight.copy_(w)  # type: ignore[operator]
            if b is not None:
                modules[name].bias.copy_(b)  # type: ignore[operator]

    def heads(self, layer: Any, head_size: int) -> int:
        """The layer's attention heads (0: its attention block is removed)."""
        q = self.projections(layer).get("q")
        return 0 if q is None else int(q.weight.shape[0]) // head_size  # type: ignore[union-attr,index]

    def norms(self, layer: Any) -> dict[str, nn.Module]:
        """LayerNorms inside the blocks (kept in a removed block): ``attention``, ``ffn``."""
        return {}


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias)


def _has_bias(module: Any) -> bool:
    return getattr(module, "bias", None) is not None


class BertLayout(EncoderLayout):
    name, attention_slot, ffn_slot = "bert", "attention", "output"
    names = ("query", "key", "value")

    def matches(self, layer: nn.Module) -> bool:
        attention = getattr(layer, "attention", None)
        a = getattr(attention, "self", None)
        heads = isinstance(attention, RemovedAttention) or all(isinstance(getattr(a, n, None), nn.Linear)
                                                                for n in self.names)  # fmt: skip
        return heads and hasattr(layer, "intermediate") and hasattr(layer, "output")

    def extra(self, attention: Any) -> dict[str, nn.Module]:
        return {}

    def projections(self, layer: Any) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        if not self.attention_removed(layer):
            a = layer.attention.self
            out.update({k: getattr(a, n) for k, n in zip("qkv", self.names, strict=True)})
            out.update(self.extra(a))
            out["o"] = layer.attention.output.dense
        up = None if hasattr(layer.intermediate, "ffn_units") else getattr(layer.intermediate, "dense", None)
        down = getattr(layer.output, "dense", None)
        if isinstance(up, nn.Linear) and isinstance(down, nn.Linear):  # not removed, not split into experts
            out["up"], out["down"] = up, down
        return out

    def units(self, layer: Any) -> int:
        if self.ffn_removed(layer):
            return 0
        inter = layer.intermediate  # moefy's experts in the slot, or BERT's intermediate with its `dense`
        return _ffn_units(inter if hasattr(inter, "ffn_units") else inter.dense)

    def norms(self, layer: Any) -> dict[str, nn.Module]:
        out = {}
        if not self.attention_removed(layer):
            out["attention"] = layer.attention.output.LayerNorm
        if not self.ffn_removed(layer):
            out["ffn"] = layer.output.LayerNorm
        return out

    def resize(self, layer: Any, config: Any, heads: int, units: int) -> None:
        hidden, d, eps = config.hidden_size, config.hidden_size // config.num_attention_heads, config.layer_norm_eps
        if heads == 0:
            layer.attention = RemovedAttention(hidden, eps)
        else:
            a = layer.attention.self
            for n in self.names:
                setattr(a, n, _linear(hidden, heads * d))
            for n, module in self.extra(a).items():
                setattr(a, n, _linear(hidden, heads * d, module.bias is not None))  # type: ignore[union-attr]
            a.num_attention_heads, a.all_head_size = heads, heads * d
            layer.attention.output.dense = _linear(heads * d, hidden)
        if units == 0:
            layer.intermediate, layer.output = nn.Identity(), RemovedFFNOutput(hidden, eps)
        else:
            layer.intermediate.dense, layer.output.dense = _linear(hidden, units), _linear(units, hidden)


class DebertaV2Layout(BertLayout):
    name = "deberta-v2"
    names = ("query_proj", "key_proj", "value_proj")

    def extra(self, attention: Any) -> dict[str, nn.Module]:
        return {n: getattr(attention, n) for n in ("pos_key_proj", "pos_query_proj")
                if isinstance(getattr(attention, n, None), nn.Linear)}  # fmt: skip


class DistilBertLayout(EncoderLayout):
    name, attention_slot, ffn_slot = "distilbert", "attention", "ffn"

    def matches(self, layer: nn.Module) -> bool:
        a, f = getattr(layer, "attention", None), getattr(layer, "ffn", None)
        return (isinstance(a, BiasOnly) or all(isinstance(getattr(a, f"{p}_lin", None), nn.Linear)
                                                for p in ("q", "k", "v", "out"))) \
            and (isinstance(f, BiasOnly) or isinstance(getattr(f, "lin2", None), nn.Linear | nn.Identity))  # fmt: skip

    def projections(self, layer: Any) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        if not self.attention_removed(layer):
            a = layer.attention
            out.update({"q": a.q_lin, "k": a.k_lin, "v": a.v_lin, "o": a.out_lin})
        up, down = getattr(layer.ffn, "lin1", None), getattr(layer.ffn, "lin2", None)
        if isinstance(up, nn.Linear) and isinstance(down, nn.Linear):  # not removed, not split into experts
            out["up"], out["down"] = up, down
        return out

    def units(self, layer: Any) -> int:
        return 0 if self.ffn_removed(layer) else _ffn_units(layer.ffn.lin1)

    def resize(self, layer: Any, config: Any, heads: int, units: int) -> None:
        hidden, d = config.hidden_size, config.hidden_size // config.num_attention_heads
        if heads == 0:
            layer.attention = BiasOnly(hidden, attention=True)
        else:
            a = layer.attention
            a.q_lin, a.k_lin, a.v_lin = (_linear(hidden, heads * d) for _ in range(3))
            a.out_lin, a.n_heads = _linear(heads * d, hidden), heads
        if units == 0:
            layer.ffn = BiasOnly(hidden, attention=False)
        else:
            layer.ffn.lin1, layer.ffn.lin2 = _linear(hidden, units), _linear(units, hidden)


class ModernBertLayout(EncoderLayout):
    """ModernBERT's pre-LN layers: query, key and value fused in ``attn.Wqkv`` (all query rows, then key, then value;
    the attention views it with ``-1`` heads), ``attn.Wo``; a GLU ``mlp.Wi`` (``act`` on its first half, times its
    second) and ``mlp.Wo``. Biases where the config has them (none by default)."""

    name, attention_slot, ffn_slot = "modernbert", "attn", "mlp"

    def matches(self, layer: nn.Module) -> bool:
        a, f = getattr(layer, "attn", None), getattr(layer, "mlp", None)
        return (isinstance(a, BiasOnly) or all(isinstance(getattr(a, n, None), nn.Linear) for n in ("Wqkv", "Wo"))) \
            and (isinstance(f, BiasOnly) or isinstance(getattr(f, "Wo", None), nn.Linear | nn.Identity)
                 or hasattr(f, "ffn_units"))  # fmt: skip

    def projections(self, layer: Any) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {}
        if not self.attention_removed(layer):
            out["qkv"], out["o"] = layer.attn.Wqkv, layer.attn.Wo
        up, down = getattr(layer.mlp, "Wi", None), getattr(layer.mlp, "Wo", None)
        if isinstance(up, nn.Linear) and isinstance(down, nn.Linear):
            out["gate_up"], out["down"] = up, down
        return out

    def read(self, layer: Any) -> Weights:
        fused = super().read(layer)
        out: Weights = {k: v for k, v in fused.items() if k in ("o", "down")}
        for name, parts in (("qkv", "qkv"), ("gate_up", ("gate", "up"))):
            if name in fused:
                w, b = fused[name]
                n = len(parts)
                for part, wp, bp in zip(parts, w.chunk(n), (None,) * n if b is None else b.chunk(n), strict=True):
                    out[part] = (wp, bp)
        return out

    @torch.no_grad()
    def load(self, layer: Any, weights: Weights) -> None:
        fused: Weights = {k: v for k, v in weights.items() if k in ("o", "down")}
        for name, parts in (("qkv", "qkv"), ("gate_up", ("gate", "up"))):
            if parts[0] in weights:
                bias = None if weights[parts[0]][1] is None else torch.cat([weights[p][1] for p in parts])  # type: ignore[misc]
                fused[name] = (torch.cat([weights[p][0] for p in parts]), bias)
        super().load(layer, fused)

    def outputs(self, layer: Any) -> tuple[nn.Module, nn.Module]:
        return layer.attn.Wo, layer.mlp.Wo

    def heads(self, layer: Any, head_size: int) -> int:
        return 0 if self.attention_removed(layer) else int(layer.attn.Wqkv.out_features) // (3 * head_size)

    def units(self, layer: Any) -> int:
        if self.ffn_removed(layer):
            return 0
        units = getattr(layer.mlp, "ffn_units", None)  # moefy's experts
        return int(units) if units is not None else int(layer.mlp.Wo.in_features)

    def resize(self, layer: Any, config: Any, heads: int, units: int) -> None:
        hidden, d = config.hidden_size, config.hidden_size // config.num_attention_heads
        if heads == 0:
            layer.attn = BiasOnly(hidden, attention=True)
        else:
            a = layer.attn
            a.Wqkv = _linear(hidden, 3 * heads * d, _has_bias(a.Wqkv))
            a.Wo = _linear(heads * d, hidden, _has_bias(a.Wo))
        if units == 0:
            layer.mlp = BiasOnly(hidden, attention=False)
        else:
            m = layer.mlp
            m.Wi, m.Wo = _linear(hidden, 2 * units, _has_bias(m.Wi)), _linear(units, hidden, _has_bias(m.Wo))


LAYOUTS: tuple[EncoderLayout, ...] = (BertLayout(), DebertaV2Layout(), DistilBertLayout(), ModernBertLayout())


def find_encoder_layout(layer: nn.Module) -> EncoderLayout | None:
    return next((layout for layout in LAYOUTS if layout.matches(layer)), None)


def encoder_layout_of(layer: nn.Module, where: str = "the model") -> EncoderLayout:
    """The layout of ``layer``, or a clear error naming the ones there are."""
    layout = find_encoder_layout(layer)
    if layout is None:
        raise ModelError(f"{where}: encoder layer {type(layer).__name__} has none of the module layouts that "
                         f"per-layer pruning reads ({', '.join(x.name for x in LAYOUTS)}).")  # fmt: skip
    return layout
