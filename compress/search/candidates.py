"""Turn a searched arch into a model: a built-in CNN, a Hugging Face encoder of the teacher's family, or a causal LM
of the teacher's architecture."""

from __future__ import annotations

import copy
import zlib
from typing import Any

import torch
from torch import nn

from compress.errors import StageError
from compress.models.decoder import decoder_head_size, decoder_layers
from compress.models.layer_map import evenly_spaced, keep_config_layers
from compress.models.structure import TRANSFORM as STRUCTURE
from compress.models.structure import current_structure, encoder_layers, head_size, resize_encoder
from compress.models.task_model import TaskModel
from compress.search.space import Arch, CnnSpace, Space, TransformerSpace, arch_key


def arch_seed(seed: int, arch: Arch) -> int:
    """A seed per candidate, independent of the order in which the search visits candidates."""
    return zlib.crc32(f"{seed}:{arch_key(arch)}".encode())


def transformer_config(teacher_config: Any, arch: Arch) -> Any:
    cfg = copy.deepcopy(teacher_config)
    d = head_size(teacher_config)
    cfg.num_hidden_layers = arch["layers"]
    cfg.hidden_size = arch["hidden"]
    cfg.num_attention_heads = arch["hidden"] // d
    cfg.intermediate_size = arch["ffn"]
    return cfg


def build_transformer(teacher_config: Any, arch: Arch, *, meta: bool = False) -> nn.Module:
    """A randomly initialised encoder shaped like ``arch`` (on the meta device when only the shape matters)."""
    from transformers import AutoModelForSequenceClassification

    cfg = transformer_config(teacher_config, arch)
    with torch.device("meta") if meta else torch.device("cpu"):
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
        layers = len(encoder_layers(model))
        resize_encoder(model, [arch["heads"]] * layers, [arch["ffn"]] * layers)
    if not meta:  # the resized projections get the family's own initialisation, like every other weight
        for layer in encoder_layers(model):
            for lin in layer.modules():
                if isinstance(lin, nn.Linear):
                    nn.init.normal_(lin.weight, std=cfg.initializer_range)
                    nn.init.zeros_(lin.bias)
    return model


def build_candidate(space: Space, arch: Arch, teacher: TaskModel, *, in_channels: int | None, seed: int) -> TaskModel:
    """A randomly initialised candidate (seeded by ``seed`` and the arch)."""
    torch.manual_seed(arch_seed(seed, arch))
    if isinstance(space, CnnSpace):
        from compress.models.cnn import CNN

        spec = space.to_spec(arch).model_copy(update={"in_channels": in_channels, "num_classes": teacher.num_labels})
        return TaskModel(CNN(spec).eval(), "cnn", "image", teacher.num_labels, None, spec.model_dump())
    assert isinstance(space, TransformerSpace)
    module = build_transformer(teacher.module.config, arch)  # type: ignore[union-attr]
    model = TaskModel(module.eval(), "hf", "text", teacher.num_labels, teacher.tokenizer, {"search": arch})
    model.record(STRUCTURE, current_structure(module))
    return model


def _resolve(space: TransformerSpace, key: str, cfg: Any, *, hidden_unit: int, heads_unit: int) -> TransformerSpace:
    """Unset choices from the teacher's config (layers 1/3 to 2/3 of its depth; hidden, heads and FFN 1/2 to all
    of its own, in multiples of ``hidden_unit``, ``heads_unit`` and 64), then every choice checked against it."""
    n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    heads, ffn = cfg.num_attention_heads, cfg.intermediate_size

    def frac(total: int, lo: float, unit: int = 1) -> list[int]:
        return sorted({min(total, max(unit, round(total * f / unit) * unit)) for f in (lo, (lo + 1) / 2, 1.0)})

    layers_default = sorted({max(1, round(n_layers / 3)), max(1, round(n_layers / 2)), max(1, round(2 * n_layers / 3))})
    resolved = space.model_copy(update={
        "layers": space.layers or layers_default,
        "hidden": space.hidden or frac(hidden, 0.5, hidden_unit),
        "heads": space.heads or frac(heads, 0.5, heads_unit),
        "ffn": space.ffn or frac(ffn, 0.5, 64),
    })  # fmt: skip
    limits = {"layers": n_layers, "hidden": hidden, "heads": heads, "ffn": ffn}
    for name, top in limits.items():
        bad = [v for v in getattr(resolved, name) if v > top]
        if bad:
            raise StageError(f"{key}.{name}: {bad} exceed the teacher's {name} ({top}); weights are sliced from it.")
    return resolved


def resolve_transformer_space(space: TransformerSpace, teacher: TaskModel, key: str) -> TransformerSpace:
    """Fill unset choices from the teacher and check every choice fits it (errors name ``key``)."""
    cfg: Any = getattr(teacher.module, "config", None)
    if cfg is None:  # the encoder family asks this of its Hugging Face members only
        name = type(teacher.module).__name__
        raise StageError(f"{key}: a transformer space needs a Hugging Face text teacher ({name} has no config).")
    encoder_layers(teacher.module)
    d = head_size(cfg)
    resolved = _resolve(space, key, cfg, hidden_unit=d, heads_unit=1)
    bad = [h for h in resolved.choices()["hidden"] if h % d]
    if bad:
        raise StageError(f"{key}.hidden: {bad} are not multiples of the teacher's head size {d}.")
    return resolved


# ---- causal LMs (LLaMA-style: grouped-query attention, SwiGLU) ------------------------------------------------------
def queries_per_kv(cfg: Any) -> int:
    """Query heads per key/value head (1 without grouped-query attention)."""
    return int(cfg.num_attention_heads // (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads))


def decoder_config(teacher_config: Any, arch: Arch) -> Any:
    """The teacher's config at the arch's shape: ``heads`` query heads of the teacher's head size (so ``hidden`` is
    free), ``heads / g`` key/value heads for the teacher's ``g`` queries per key/value head."""
    cfg = copy.deepcopy(teacher_config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.head_dim = decoder_head_size(teacher_config)
    keep_config_layers(cfg, evenly_spaced(arch["layers"], teacher_config.num_hidden_layers))
    cfg.hidden_size = arch["hidden"]
    cfg.num_attention_heads = arch["heads"]
    cfg.num_key_value_heads = arch["heads"] // queries_per_kv(teacher_config)
    cfg.intermediate_size = arch["ffn"]
    return cfg


def build_decoder(teacher_config: Any, arch: Arch, *, meta: bool = False) -> nn.Module:
    """A randomly initialised causal LM shaped like ``arch`` (on the meta device when only the shape matters)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta") if meta else torch.device("cpu"):
        return AutoModelForCausalLM.from_config(decoder_config(teacher_config, arch))


def build_decoder_candidate(arch: Arch, teacher: TaskModel, *, seed: int) -> TaskModel:
    torch.manual_seed(arch_seed(seed, arch))
    module = build_decoder(teacher.module.config, arch)
    return TaskModel(module.eval(), "hf", "lm", teacher.num_labels, teacher.tokenizer, {"search": arch})


def resolve_decoder_space(space: TransformerSpace, teacher: TaskModel, key: str) -> TransformerSpace:
    """Fill unset choices from a LLaMA-style teacher and check every choice fits it (errors name ``key``): layers
    1/3 to 2/3 of its depth, hidden 1/2 to all of its width (multiples of its head size), query heads 1/2 to all
    (multiples of its queries per key/value head), FFN 1/2 to all (multiples of 64)."""
    cfg: Any = teacher.module.config
    layer = decoder_layers(teacher.module)[0]
    if not all(hasattr(layer, n) for n in ("self_attn", "mlp")) or not hasattr(layer.mlp, "gate_proj"):
        raise StageError(f"{key}: the decoder super-network slices LLaMA-style layers (self_attn with q/k/v/o "
                         f"projections, a SwiGLU mlp); {type(teacher.module).__name__} has other ones.")  # fmt: skip
    d, g = decoder_head_size(cfg), queries_per_kv(cfg)
    resolved = _resolve(space, key, cfg, hidden_unit=d, heads_unit=g)
    bad = [h for h in resolved.choices()["heads"] if h % g]
    if bad:
        raise StageError(f"{key}.heads: {bad} are not multiples of the teacher's {g} query heads per key/value head "
                         "(grouped-query attention keeps its groups whole).")  # fmt: skip
    return resolved
