"""Per-layer encoder structure of Hugging Face encoders: how many attention heads and FFN units each layer keeps.

Hugging Face encoders size every layer from one config (``hidden / heads`` per head, ``intermediate_size`` units).
Searched and pruned students differ per layer, so the structure is recorded as the model transform
``encoder_structure`` (``{"heads": [...], "ffn": [...]}``) and re-applied when the model is loaded, through each
layer's module layout (`compress.models.encoder_layout`: BERT's, DeBERTa-v2's, DistilBERT's). The head size stays
the config's ``hidden_size // num_attention_heads``; the layout sets the per-layer head count the attention reads.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from compress.errors import ModelError
from compress.models.encoder_layout import RemovedAttention, RemovedFFNOutput, encoder_layout_of
from compress.models.transforms import register_transform

__all__ = ["RemovedAttention", "RemovedFFNOutput", "current_structure", "resize_encoder"]

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
    """Heads and FFN units of every layer, read from the modules themselves (through the layer's layout)."""
    heads, ffn = [], []
    d = head_size(model.config)  # type: ignore[attr-defined]
    for layer in encoder_layers(model):
        layout = encoder_layout_of(layer)
        heads.append(layout.heads(layer, d))
        ffn.append(layout.units(layer))
    return {"heads": heads, "ffn": ffn}


def resize_encoder(model: nn.Module, heads: list[int], ffn: list[int]) -> None:
    """Replace each layer's projections with ones sized for ``heads[i]`` heads and ``ffn[i]`` units (new weights).
    Zero heads or zero units remove the block: only its output bias (and its LayerNorm, where the block holds
    one) remain (`compress.models.encoder_layout`)."""
    layers = encoder_layers(model)
    if len(heads) != len(layers) or len(ffn) != len(layers):
        raise ModelError(f"structure has {len(heads)} heads / {len(ffn)} ffn entries for {len(layers)} layers.")
    config: Any = model.config
    d = head_size(config)
    for layer, n, f in zip(layers, heads, ffn, strict=True):
        if n < 0 or f < 0:
            raise ModelError(f"heads and FFN units cannot be negative (got heads={n}, ffn={f}).")
        encoder_layout_of(layer).resize(layer, config, n, f)
    if len(set(heads)) == 1 and heads[0] * d == config.hidden_size and len(set(ffn)) == 1 and ffn[0] > 0:
        if hasattr(config, "intermediate_size"):  # uniform: the config alone describes it
            config.intermediate_size = ffn[0]
        elif hasattr(config, "hidden_dim"):  # DistilBERT
            config.hidden_dim = ffn[0]


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
