"""Per-layer encoder structure of BERT-family models: how many attention heads and FFN units each layer keeps.

Hugging Face BERT sizes every layer from one config (``hidden / heads`` per head, ``intermediate_size`` units).
Searched and pruned students differ per layer, so the structure is recorded as the model transform
``encoder_structure`` (``{"heads": [...], "ffn": [...]}``) and re-applied when the model is loaded. The head size
stays the config's ``hidden_size // num_attention_heads``; HF's attention reshapes with ``-1`` heads, so a layer
with smaller Q/K/V projections simply runs fewer heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.transforms import register_transform

TRANSFORM = "encoder_structure"


# the Hugging Face encoders with BERT's module layout (`<base>.encoder.layer.N` with `attention.self.query/key/value`,
# `intermediate.dense`, `output.dense`): what attention taps, DPHuBERT, LaDiMo and Transformer search read
BERT_LAYOUT = ("bert", "roberta", "xlm-roberta", "electra")
# where an encoder keeps its layer list below the base model: BERT, RoBERTa, ELECTRA, DeBERTa (`encoder.layer`),
# DistilBERT (`transformer.layer`), ModernBERT (`layers`). Layer taps and students of the teacher's own layers need
# no more than this.
LAYER_LISTS = (("encoder", "layer"), ("transformer", "layer"), ("layers",))


def encoder_layer_path(model: nn.Module) -> str:
    """The module path of a Hugging Face encoder's layer list (`bert.encoder.layer`, `distilbert.transformer.layer`,
    `model.layers`)."""
    prefix = str(getattr(model, "base_model_prefix", ""))
    base = getattr(model, prefix, None)
    for names in LAYER_LISTS:
        holder: Any = base
        for name in names:
            holder = getattr(holder, name, None)
        if isinstance(holder, nn.ModuleList) and len(holder):
            return ".".join((prefix, *names))
    raise ModelError(
        f"{type(model).__name__} has no encoder layer list (`<base>.encoder.layer`, `<base>.transformer.layer` or "
        "`<base>.layers`); this needs a Hugging Face encoder (BERT, RoBERTa, DistilBERT, DeBERTa, ModernBERT, ...)."
    )


def encoder_layers(model: nn.Module) -> list[Any]:
    """The layer modules of a Hugging Face encoder (typed loosely: HF layers expose their sub-modules as dynamic
    attributes)."""
    return list(model.get_submodule(encoder_layer_path(model)))  # type: ignore[call-overload]


def head_size(config: Any) -> int:
    return int(config.hidden_size // config.num_attention_heads)


def current_structure(model: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN units of every layer, read from the modules themselves."""
    heads, ffn = [], []
    d = head_size(model.config)  # type: ignore[attr-defined]
    for layer in encoder_layers(model):
        removed_att = isinstance(layer.attention, RemovedAttention)
        heads.append(0 if removed_att else layer.attention.self.query.out_features // d)
        ffn.append(0 if isinstance(layer.output, RemovedFFNOutput) else _ffn_units(layer.intermediate))
    return {"heads": heads, "ffn": ffn}


def _ffn_units(intermediate: nn.Module) -> int:
    units = getattr(intermediate, "ffn_units", None)  # a replaced FFN (moefy's experts) counts its own units
    if units is not None:
        return int(units)
    return int(intermediate.dense.out_features)  # type: ignore[union-attr,arg-type]


class RemovedAttention(nn.Module):
    """An attention block with no heads left: ``LayerNorm(x + b)``, ``b`` the output projection's bias."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return self.LayerNorm(hidden_states + self.bias), None


class RemovedFFNOutput(nn.Module):
    """The output of an FFN block with no units left: ``LayerNorm(x + b)`` (its intermediate is an Identity)."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(input_tensor + self.bias)


def resize_encoder(model: nn.Module, heads: list[int], ffn: list[int]) -> None:
    """Replace each layer's projections with ones sized for ``heads[i]`` heads and ``ffn[i]`` units (new weights).
    Zero heads or zero units remove the block: only its output bias and LayerNorm remain."""
    layers = encoder_layers(model)
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise ModelError(f"structure has {len(heads)} heads / {len(ffn)} ffn entries for {len(layers)} layers.")
    config: Any = model.config
    hidden, d = config.hidden_size, head_size(config)
    eps = config.layer_norm_eps
    for layer, n, f in zip(layers, heads, ffn, strict=True):
        if n < 0 or f < 0:
            raise ModelError(f"heads and FFN units cannot be negative (got heads={n}, ffn={f}).")
        if n == 0:
            layer.attention = RemovedAttention(hidden, eps)
        else:
            attn = layer.attention.self
            attn.query, attn.key, attn.value = (nn.Linear(hidden, n * d) for _ in range(3))
            attn.num_attention_heads, attn.all_head_size = n, n * d
            layer.attention.output.dense = nn.Linear(n * d, hidden)
        if f == 0:
            layer.intermediate, layer.output = nn.Identity(), RemovedFFNOutput(hidden, eps)
        else:
            layer.intermediate.dense = nn.Linear(hidden, f)
            layer.output.dense = nn.Linear(f, hidden)
    if len(set(heads)) == 1 and heads[0] * d == hidden and len(set(ffn)) == 1 and ffn[0] > 0:
        config.intermediate_size = ffn[0]  # uniform: the config alone describes it


def drop_encoder_layers(model: nn.Module, removed: list[int]) -> None:
    """Delete encoder layers (by index) in place; the config's layer count follows, so the model saves and reloads
    with its new depth (the per-layer structure is recorded after this)."""
    layers = encoder_layers(model)
    if len(set(removed)) >= len(layers):
        raise ModelError(f"cannot remove all {len(layers)} encoder layers.")
    holder_path, _, name = encoder_layer_path(model).rpartition(".")
    kept = [layer for i, layer in enumerate(layers) if i not in set(removed)]
    setattr(model.get_submodule(holder_path), name, nn.ModuleList(kept))
    for i, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    model.config.num_hidden_layers = len(kept)  # type: ignore[union-attr]


@register_transform(TRANSFORM)
def _reapply(module: nn.Module, args: Any) -> None:
    resize_encoder(module, args["heads"], args["ffn"])
