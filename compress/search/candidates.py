"""Turn a searched arch into a model: a built-in CNN, or a Hugging Face encoder of the teacher's family."""

from __future__ import annotations

import copy
import zlib
from typing import Any

import torch
from torch import nn

from compress.errors import StageError
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


def resolve_transformer_space(space: TransformerSpace, teacher: TaskModel, key: str) -> TransformerSpace:
    """Fill unset choices from the teacher and check every choice fits it (errors name ``key``)."""
    if teacher.kind != "hf" or teacher.modality != "text":
        raise StageError(f"{key}: a transformer space needs a Hugging Face text teacher (got a {teacher.kind} model).")
    cfg: Any = teacher.module.config
    encoder_layers(teacher.module)
    n_layers, hidden, heads, ffn = (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.intermediate_size,
    )
    d = head_size(cfg)

    def frac(total: int, lo: float, unit: int = 1) -> list[int]:
        return sorted({max(unit, round(total * f / unit) * unit) for f in (lo, (lo + 1) / 2, 1.0)})

    layers_default = sorted({max(1, round(n_layers / 3)), max(1, round(n_layers / 2)), max(1, round(2 * n_layers / 3))})
    resolved = space.model_copy(
        update={
            "layers": space.layers or layers_default,
            "hidden": space.hidden or frac(hidden, 0.5, d),
            "heads": space.heads or frac(heads, 0.5),
            "ffn": space.ffn or frac(ffn, 0.5, 64),
        }
    )
    limits = {"layers": n_layers, "hidden": hidden, "heads": heads, "ffn": ffn}
    for name, top in limits.items():
        bad = [v for v in getattr(resolved, name) if v > top]
        if bad:
            raise StageError(f"{key}.{name}: {bad} exceed the teacher's {name} ({top}); weights are sliced from it.")
    bad = [h for h in resolved.choices()["hidden"] if h % d]
    if bad:
        raise StageError(f"{key}.hidden: {bad} are not multiples of the teacher's head size {d}.")
    return resolved
