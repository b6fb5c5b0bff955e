"""The `encoder` family: BERT-style Transformer text encoders from Hugging Face (BERT, MiniLM, RoBERTa, ...),
the built-in BERT students sliced from them, and user models (`python:` factories) that take token ids.

Hugging Face members have `<base>.encoder.layer.N` layers: their hidden states, attention, heads and FFNs are
what layer-to-layer and attention distillation, DPHuBERT, LaDiMo and Transformer search work on. A user's
token model gets what any model gets (logit distillation, hints by module path, quantization, export).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from compress.errors import ModelError
from compress.families.base import Family, register_family
from compress.models.bert import default_layer_map
from compress.models.inputs import TOKENS, InputSpec
from compress.models.structure import TRANSFORM, current_structure, encoder_layers, head_size
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


@register_family
class EncoderFamily(Family):
    name = "encoder"
    modality = "text"
    summary = "BERT-style text encoders"
    kinds = ("hf", "python")
    space_kind = "transformer"
    capabilities = {
        "prune:dphubert": HF,
        "prune:latency": HF,
        "moefy": HF,
        "search:diswot": HF,
        "search:autodistil": HF,
        "search:latency": HF,
        "quantize:bitsandbytes": HF,
        "losses:attention": HF,
        "hidden_states": HF,
        "student:bert": HF,
        "gradient_checkpointing": HF,
        "export": ("hf", "python"),
        "quantize:qat": ("hf", "python"),
        "quantize:ptq": ("hf", "python"),
        "quantize:budget": ("hf", "python"),
        "distill:augment": ("hf", "python"),
    }

    def check_teacher(self, model: TaskModel, sample: Callable[[], Batch], max_length: int, where: str) -> None:
        self.check_positions(max_length, self.positions(model))
        super().check_teacher(model, sample, max_length, where)

    def input_spec(self, model: TaskModel) -> InputSpec:
        """Token ids and attention mask; a Hugging Face encoder's static programs take the additive 4-D mask."""
        return InputSpec(TOKENS.names, sequence=True, dummy_token=1000, additive_mask=model.kind == "hf")

    def positions(self, model: TaskModel) -> int | None:
        value = getattr(getattr(model.module, "config", None), "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    def feature_modules(self, model: TaskModel) -> list[str]:
        names = [n for n, _ in model.module.named_modules()]
        return [n for n in names if n.split(".")[-2:-1] == ["layer"] and ".encoder." in f".{n}"]

    def layers(self, model: TaskModel) -> int:
        return len(encoder_layers(model.module))

    def hidden_width(self, model: TaskModel) -> int:
        return int(model.module.config.hidden_size)  # type: ignore[union-attr,arg-type]

    def hidden_states(
        self, model: TaskModel, batch: Batch, layers: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model.module(  # type: ignore[operator]
            **model.inputs(batch), output_hidden_states=True
        )
        return out.logits, [out.hidden_states[i + 1] for i in layers]

    def default_layer_map(self, student: TaskModel, teacher: TaskModel) -> list[int]:
        s_layers, t_layers = self.layers(student), self.layers(teacher)
        if s_layers == t_layers:
            return list(range(s_layers))
        init = (student.spec.get("bert") or {}).get("init_from_layers")
        return list(init) if init and len(init) == s_layers else default_layer_map(s_layers, t_layers)

    def masked_groups(self, model: TaskModel, goal: PruneGoal, where: str, data: DataBundle) -> MaskedGroups:
        self.require("prune:dphubert", where, model)
        from compress.pruning.masked import EncoderGroups

        return EncoderGroups(model, goal)

    def latency_costs(self, model: TaskModel, device: DeviceProfile, sequence: int, cache_dir: Path, *,
                      precision: str, statistic: str,
                      reference: tuple[DeviceProfile, Path] | None = None) -> LatencyCosts:  # fmt: skip
        from compress.pruning.latency_costs import measure_costs

        return measure_costs(model.module.config, device, sequence, cache_dir, precision=precision, statistic=statistic,
                    reference=reference)  # fmt: skip

    def ffn_blocks(self, model: TaskModel, where: str) -> list[FfnBlock]:
        self.require("moefy", where, model)
        from compress.moe.experts import find_ffn_blocks

        return find_ffn_blocks(model.module)

    def search_space(self, space: Space | None, teacher: TaskModel, where: str) -> Space:
        self.require("search:diswot", where, teacher)
        from compress.search.candidates import resolve_transformer_space
        from compress.search.space import TransformerSpace

        space = TransformerSpace() if space is None else space
        if space.kind != "transformer":
            raise ModelError(f"{where}.space: a {space.kind} space does not fit a {self.summary[:-1]} teacher; "
                             "give a Transformer space (layers, hidden, heads, ffn).")  # fmt: skip
        if teacher.has_transform(TRANSFORM):
            raise ModelError(f"{where}.space: the teacher has a per-layer pruned structure; search needs a uniform "
                             "teacher.")  # fmt: skip
        return resolve_transformer_space(space, teacher, f"{where}.space")  # type: ignore[arg-type]

    def supernet(self, teacher: TaskModel) -> SlicedSuperNet:
        self.require("search:autodistil", "search", teacher)
        from compress.search.supernet import SuperNet

        return SuperNet(teacher.module)

    def search_student(self, space: Space, arch: Arch, teacher: TaskModel, data: DataBundle, seed: int,
                       supernet: Any = None) -> TaskModel:  # fmt: skip
        from compress.search.supernet import SuperNet

        net = supernet if supernet is not None else SuperNet(teacher.module)  # DisWOT: slice the rewired teacher
        module = net.extract(arch)
        student = TaskModel(module, "hf", "text", teacher.num_labels, teacher.tokenizer, {"search": arch})
        student.record(TRANSFORM, current_structure(module))
        return self.adopt(student)

    def qat_losses(self, model: TaskModel) -> list[LossConfig]:
        if not self.supports("losses:attention", model.kind):
            return super().qat_losses(model)
        from compress.losses.attention import AttentionMapConfig, AttentionOutputConfig
        from compress.losses.terms import KDConfig

        return [
            KDConfig(name="kd", weight=1.0, temperature=1.0),
            AttentionMapConfig(name="attention_map", weight=1.0),
            AttentionOutputConfig(name="attention_output", weight=1.0),
        ]

    def ptq_scheme(self, model: TaskModel) -> PtqScheme:
        """MatMul and Gemm; onnxruntime's BERT fusion (attention, SkipLayerNorm, BiasGelu) before dynamic int8
        for Hugging Face models of a type it recognises, with the head count of the first layer that has heads
        (searched students may differ from ``hidden / head size``; pruned layers get their own after fusion).
        The fused attention quantizes each layer's concatenated Q, K, V weight with one scale."""
        from compress.quant import ort
        from compress.quant.ptq import PtqScheme

        cfg = getattr(model.module, "config", None)
        if model.kind != "hf" or getattr(cfg, "model_type", None) not in ort.FUSABLE_MODEL_TYPES:
            return PtqScheme()
        size = head_size(cfg)
        heads = next((h for h in current_structure(model.module)["heads"] if h), 0)
        names = ("query", "key", "value")
        qkv = tuple(tuple(f"{n}.{k}" for k in names) for n, m in model.module.named_modules()
                    if all(isinstance(getattr(m, k, None), torch.nn.Linear) for k in names))  # fmt: skip
        return PtqScheme(fusion=(heads, heads * size, size), shared_scale=qkv)

    def check_bitsandbytes(self, model: TaskModel, where: str) -> None:
        super().check_bitsandbytes(model, where)
        if model.has_transform(TRANSFORM):
            raise ModelError(f"{where}: a pruned encoder (per-layer shapes) that transformers cannot reload "
                             "quantized; quantize it with qat or ptq.")  # fmt: skip

    def qat_transformer(self, model: TaskModel) -> bool:
        return model.kind == "hf"
