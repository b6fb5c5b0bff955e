"""The `encoder` family: Transformer text encoders from Hugging Face (BERT, MiniLM, RoBERTa, ELECTRA, DistilBERT,
DeBERTa, ModernBERT, ...), the built-in students sliced from them, and user models (`python:` factories) that take
token ids.

Hugging Face members have a layer list (`<base>.encoder.layer.N`, DistilBERT's `transformer.layer.N`, ModernBERT's
`layers.N`): students are made of its layers and layer-to-layer distillation taps their hidden states. Inside
BERT's layout, attention, heads and FFNs are what attention distillation, DPHuBERT, LaDiMo and Transformer search
work on. A user's
token model gets what any model gets (logit distillation, hints by module path, quantization, export).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from compress.errors import ModelError
from compress.families import methods as m
from compress.families.base import Family, register_family
from compress.models.inputs import TOKENS, InputSpec
from compress.models.structure import (
    BERT_LAYOUT,
    TRANSFORM,
    current_structure,
    encoder_layer_path,
    encoder_layers,
    head_size,
)
from compress.models.task_model import TaskModel

if TYPE_CHECKING:
    from pathlib import Path

    from compress.data.dataset import Batch, DataBundle
    from compress.devices import DeviceProfile
    from compress.losses import LossConfig
    from compress.moe.experts import FfnBlock
    from compress.pruning.latency_costs import LatencyCosts
    from compress.pruning.masked import MaskedGroups, PruneGoal
    from compress.quant.ptq import PtqScheme
    from compress.search.space import Arch, Space
    from compress.search.supernet import SlicedSuperNet

HF = ("hf",)
ANY = ("hf", "python")
# the encoders whose layers a student is made of and whose hidden states layer-to-layer distillation taps (a layer
# list below the base model); the methods that read inside a layer (attention taps, DPHuBERT, LaDiMo, search) need
# BERT's layout (`BERT_LAYOUT`). Each type is checked by tests/families/test_encoder_architectures.py.
LAYER_LIST = (*BERT_LAYOUT, "distilbert", "deberta-v2", "modernbert")
# FFNs that moefy splits (moe/experts.py): BERT's `intermediate` / `output` (DeBERTa-v2 has them too), DistilBERT's
# `ffn`, ModernBERT's fused GLU `mlp`. The same types have the layouts DPHuBERT prunes (models/encoder_layout.py:
# heads, FFN units, whole blocks and layers)
FFN_LAYOUT = (*BERT_LAYOUT, "distilbert", "deberta-v2", "modernbert")
# ALBERT runs one shared layer N times: students run it fewer times, moefy splits its FFN (one MoE, shared like the
# layer); no layer list, so no layer taps or per-layer pruning
SHARED_LAYER = ("albert",)
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))  # BERT's and DistilBERT's projections

@register_family
class EncoderFamily(Family):
    name = "encoder"
    modality = "text"
    summary = "BERT-style text encoders"
    kinds = ("hf", "python")
    space_kind = "transformer"

    def check_teacher(self, model: TaskModel, sample: Callable[[], Batch], max_length: int, where: str) -> None:
        self.check_positions(max_length, _positions(model))
        super().check_teacher(model, sample, max_length, where)

    def input_spec(self, model: TaskModel) -> InputSpec:
        """Token ids and attention mask; a Hugging Face encoder's static programs take the additive 4-D mask."""
        return InputSpec(TOKENS.names, sequence=True, dummy_token=1000, additive_mask=model.kind == "hf")

    def feature_modules(self, model: TaskModel) -> list[str]:
        try:  # a Hugging Face encoder's layer list
            path = encoder_layer_path(model.module)
            return [f"{path}.{i}" for i in range(len(encoder_layers(model.module)))]
        except ModelError:  # a user's model with BERT-like names
            names = [n for n, _ in model.module.named_modules()]
            return [n for n in names if n.split(".")[-2:-1] == ["layer"] and ".encoder." in f".{n}"]

    def ptq_scheme(self, model: TaskModel) -> PtqScheme:
        """MatMul and Gemm; onnxruntime's BERT fusion (attention, SkipLayerNorm, BiasGelu) before dynamic int8
        for Hugging Face models of a type it recognises, with the head count of the first layer that has heads
        (searched students may differ from ``hidden / head size``; pruned layers get their own after fusion).
        The fused attention quantizes each layer's concatenated Q, K, V weight with one scale."""
        from compress.quant import ort
        from compress.quant.ptq import PtqScheme

        cfg: Any = getattr(model.module, "config", None)
        if model.kind != "hf" or getattr(cfg, "model_type", None) not in ort.FUSABLE_MODEL_TYPES:
            return PtqScheme()
        size = head_size(cfg)
        if cfg.model_type in FFN_LAYOUT:  # per-layer head counts: a pruned or searched model's own
            heads = next((h for h in current_structure(model.module)["heads"] if h), 0)
        else:
            heads = int(cfg.num_attention_heads)
        qkv = tuple(tuple(f"{n}.{k}" for k in names) for n, mod in model.module.named_modules() for names in QKV_NAMES
                    if all(isinstance(getattr(mod, k, None), torch.nn.Linear) for k in names))  # fmt: skip
        return PtqScheme(fusion=(heads, heads * size, size), shared_scale=qkv)


def _positions(model: TaskModel) -> int | None:
    value = getattr(getattr(model.module, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) else None


# ---- the methods registered for the family --------------------------------------------------------------------
class _Layers(m.LayerStructure):
    student_key = "bert"

    def layers(self, model: TaskModel) -> int:
        return len(encoder_layers(model.module))

    def width(self, model: TaskModel) -> int:
        return int(model.module.config.hidden_size)  # type: ignore[union-attr,arg-type]



def _masked_groups(model: TaskModel, goal: PruneGoal, where: str, data: DataBundle) -> MaskedGroups:
    """Heads, FFN units and whole layers of the encoder layouts (BERT's, DeBERTa-v2's, DistilBERT's)."""
    from compress.pruning.masked import EncoderGroups

    return EncoderGroups(model, goal)


def _latency_costs(model: TaskModel, device: DeviceProfile, sequence: int, cache_dir: Path, *, precision: str,
                   statistic: str, reference: tuple[DeviceProfile, Path] | None = None) -> LatencyCosts:  # fmt: skip
    from compress.pruning.latency_costs import measure_costs

    return measure_costs(model.module.config, device, sequence, cache_dir, precision=precision, statistic=statistic,
                         reference=reference)  # fmt: skip


def _ffn_blocks(model: TaskModel, where: str) -> list[FfnBlock]:
    from compress.moe.experts import find_ffn_blocks

    return find_ffn_blocks(model.module)


class _Search(m.SupernetSearcher):
    """Transformer spaces over the teacher; DisWOT and AutoDistil students are slices of the (trained) super-network."""

    def space(self, space: Space | None, teacher: TaskModel, where: str) -> Space:
        from compress.search.candidates import resolve_transformer_space
        from compress.search.space import TransformerSpace

        space = TransformerSpace() if space is None else space
        if space.kind != "transformer":
            raise ModelError(f"{where}.space: a {space.kind} space does not fit a BERT-style text encoder teacher; "
                             "give a Transformer space (layers, hidden, heads, ffn).")  # fmt: skip
        if teacher.has_transform(TRANSFORM):
            raise ModelError(f"{where}.space: the teacher has a per-layer pruned structure; search needs a uniform "
                             "teacher.")  # fmt: skip
        return resolve_transformer_space(space, teacher, f"{where}.space")  # type: ignore[arg-type]

    def supernet(self, teacher: TaskModel) -> SlicedSuperNet:
        from compress.search.supernet import SuperNet

        return SuperNet(teacher.module)

    def student(self, space: Space, arch: Arch, teacher: TaskModel, data: DataBundle, seed: int,
                supernet: Any = None) -> TaskModel:  # fmt: skip
        net = supernet if supernet is not None else self.supernet(teacher)  # DisWOT: slice the rewired teacher
        module = net.extract(arch)
        student = TaskModel(module, "hf", "text", teacher.num_labels, teacher.tokenizer, {"search": arch})
        student.record(TRANSFORM, current_structure(module))
        return _FAMILY.adopt(student)


class _Qat(m.QatDefaults):
    """KD with MiniLM's attention terms on Hugging Face encoders (NNCF's Transformer scheme); KD and CE otherwise."""

    def losses(self, model: TaskModel) -> list[LossConfig]:
        if model.kind != "hf":
            return super().losses(model)
        from compress.losses.attention import AttentionMapConfig, AttentionOutputConfig
        from compress.losses.terms import KDConfig

        return [
            KDConfig(name="kd", weight=1.0, temperature=1.0),
            AttentionMapConfig(name="attention_map", weight=1.0),
            AttentionOutputConfig(name="attention_output", weight=1.0),
        ]

    def transformer(self, model: TaskModel) -> bool:
        return model.kind == "hf"


def _check_bitsandbytes(model: TaskModel, where: str) -> None:
    if model.has_transform(TRANSFORM):
        raise ModelError(f"{where}: a pruned encoder (per-layer shapes) that transformers cannot reload "
                         "quantized; quantize it with qat or ptq.")  # fmt: skip


_FAMILY = EncoderFamily()
_SEARCH = _Search()
_NAME = EncoderFamily.name
m.register(m.PRUNE_DPHUBERT, _NAME, HF, _masked_groups, architectures=FFN_LAYOUT)
m.register(m.PRUNE_LATENCY, _NAME, HF, _latency_costs, architectures=BERT_LAYOUT)
m.register(m.MOEFY, _NAME, HF, _ffn_blocks, architectures=(*FFN_LAYOUT, *SHARED_LAYER))
m.register(m.SEARCH_DISWOT, _NAME, HF, _SEARCH, architectures=BERT_LAYOUT)
m.register(m.SEARCH_AUTODISTIL, _NAME, HF, _SEARCH, architectures=BERT_LAYOUT)
m.register(m.SEARCH_LATENCY, _NAME, HF, True, architectures=BERT_LAYOUT)
m.register(m.QUANTIZE_BITSANDBYTES, _NAME, HF, _check_bitsandbytes)
m.register(m.LOSSES_ATTENTION, _NAME, HF, True, architectures=BERT_LAYOUT)
m.register(m.HIDDEN_STATES, _NAME, HF, _Layers(), architectures=LAYER_LIST)
m.register(m.STUDENT_BERT, _NAME, HF, True, architectures=(*LAYER_LIST, *SHARED_LAYER))
m.register(m.GRADIENT_CHECKPOINTING, _NAME, HF, True)
m.register(m.EXPORT, _NAME, ANY, True)
m.register(m.QUANTIZE_QAT, _NAME, ANY, _Qat(_NAME))
m.register(m.QUANTIZE_PTQ, _NAME, ANY, True)
m.register(m.QUANTIZE_BUDGET, _NAME, ANY, True)
m.register(m.DISTILL_AUGMENT, _NAME, ANY, True)
