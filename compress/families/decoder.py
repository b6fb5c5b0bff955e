"""The `decoder` family: causal language models (`task: causal_lm`) from Hugging Face (LLaMA, Mistral, Qwen2/3,
Gemma 1/2/3, OLMo, Granite, SmolLM, GPT-2: anything `AutoModelForCausalLM` loads), the built-in LLaMA-style model
trained from scratch (`llama:`), and students sliced from a decoder teacher (`decoder:`).

Members map ``input_ids`` and ``attention_mask`` to next-token logits ``(batch, positions, vocabulary)``; the task
metric is perplexity. Their decoder layers (`model.layers.N`) are the feature taps of layer-to-layer distillation.
Stages and methods this family does not have (DisWOT, latency-budgeted search, torch-pruning, 8-bit QAT, static
int8) answer "not supported for the decoder family" before any work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from compress.errors import ModelError
from compress.families import methods as m
from compress.families.base import Family, register_family
from compress.models.decoder import STRUCTURE, decoder_layers, layer_prefix
from compress.models.inputs import TOKENS, InputSpec
from compress.models.task_model import TaskModel

if TYPE_CHECKING:
    from pathlib import Path

    from compress.data.dataset import Batch, DataBundle
    from compress.devices import DeviceProfile
    from compress.graphs import Graph
    from compress.losses import LossConfig
    from compress.models.source import ModelSource
    from compress.moe.experts import FfnBlock
    from compress.pruning.latency_costs import LatencyCosts
    from compress.pruning.masked import MaskedGroups, PruneGoal
    from compress.quant.ptq import PtqScheme
    from compress.search.space import Arch, Space
    from compress.search.supernet import SlicedSuperNet

log = logging.getLogger("compress")

HF = ("hf",)
# the causal LMs with LLaMA's layer layout (`model.layers.N` with `self_attn.q/k/v/o_proj` and a gated
# `mlp.gate/up/down_proj`): what DPHuBERT's groups, LaDiMo's experts, AutoDistil's super-network and the sliced
# `decoder:` students read. Each type is checked by tests/families/test_decoder_architectures.py (pruned == masked,
# experts == dense FFN, extracted == sliced super-network, KV-cache export decodes like PyTorch). Qwen3's and OLMo's
# per-head norms, Gemma's head size apart from hidden / heads and its sqrt(hidden) embedding scale, Gemma 2/3's
# sliding-window layer types and Granite's multipliers fit it. Others (GPT-2's Conv1D, Phi-3's fused qkv and
# gate_up projections, OPT's ungated fc1/fc2) get the methods that read no layout, sliced `decoder:` students, and
# DPHuBERT (with parameter or latency targets) and moefy where their layouts (compress.models.decoder_layout,
# compress.moe.experts) read the projections: OPT, GPT-2 and Phi-3; AutoDistil's super-network is LLaMA's only.
LLAMA_LAYOUT = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "granite")
# the module layouts that per-layer methods read (models/decoder_layout.py, moe/experts.py): LLaMA-style, GPT-2, OPT,
# Phi-3
LAYER_LAYOUTS = (*LLAMA_LAYOUT, "gpt2", "opt", "phi3")
CALIBRATION_SEQUENCES = 16  # the training sequences Block Influence is measured on


@register_family
class DecoderFamily(Family):
    name = "decoder"
    modality = "lm"
    summary = "causal (decoder) language models"
    kinds = ("hf",)
    space_kind = "transformer"

    def check_teacher(self, model: TaskModel, sample: Callable[[], Batch], max_length: int, where: str) -> None:
        self.check_positions(max_length, _positions(model))
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ModelError(f"{where}: the causal LM has no tokenizer; give a model folder with one, or set "
                             "data.tokenizer to train one.")  # fmt: skip
        if len(tokenizer) > model.num_labels:
            raise ModelError(
                f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                f"{model.num_labels}; token ids beyond it would crash the embedding. Use the model's own tokenizer."
            )
        batch = sample()
        with torch.no_grad():
            logits = model.logits(batch)
        want = (*batch["input_ids"].shape, model.num_labels)
        if tuple(logits.shape) != want:
            raise ModelError(f"{where}: the model returns logits of shape {tuple(logits.shape)}, expected {want}.")

    def check_student(self, model: TaskModel, sample: Callable[[], Batch], where: str) -> None:
        self.check_teacher(model, sample, 0, where)

    def student_source(self, source: ModelSource, teacher: TaskModel, data: DataBundle) -> ModelSource:
        """A `decoder:` student of the teacher's sizes without `init_from_layers`: its layers chosen by
        `layer_choice` (Block Influence on the first training sequences, by default)."""
        from compress.models.layer_map import block_influence, evenly_spaced, most_influential

        spec = source.decoder
        if spec is None or spec.init_from_layers is not None or any((spec.hidden, spec.heads, spec.kv_heads, spec.ffn)):
            return source
        layers = decoder_layers(teacher.module)
        if spec.layer_choice == "evenly_spaced" or spec.layers >= len(layers):
            chosen = evenly_spaced(spec.layers, len(layers))
        else:
            calibration = data.train.subset(CALIBRATION_SEQUENCES).loader(4)
            scores = block_influence(teacher.module, layers, (teacher.inputs(b) for b in calibration))
            chosen = most_influential(scores, spec.layers)
            log.info("student: Block Influence of the teacher's layers %s; keeping %s",
                     [round(x, 4) for x in scores], chosen)  # fmt: skip
        return source.model_copy(update={"decoder": spec.model_copy(update={"init_from_layers": chosen})})

    def deploy_graph(self, scheme: PtqScheme | None = None, *, moe: bool = False) -> Graph:
        """The KV-cache graph (prefill and cached decoding)."""
        from compress.graphs import KvCacheGraph

        return KvCacheGraph()

    def input_spec(self, model: TaskModel) -> InputSpec:
        """Token ids and attention mask (a vocabulary trained on the data may be small: the last id is counted)."""
        return InputSpec(TOKENS.names, sequence=True, dummy_token=max(model.num_labels - 1, 0))

    def feature_modules(self, model: TaskModel) -> list[str]:
        try:
            prefix = layer_prefix(model.module)
        except ModelError:
            return []
        return [f"{prefix}.{i}" for i in range(len(decoder_layers(model.module)))]


def _positions(model: TaskModel) -> int | None:
    cfg = getattr(model.module, "config", None)
    value = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return value if isinstance(value, int) else None


# ---- the methods registered for the family --------------------------------------------------------------------
class _Layers(m.LayerStructure):
    student_key = "decoder"

    def layers(self, model: TaskModel) -> int:
        return len(decoder_layers(model.module))

    def width(self, model: TaskModel) -> int:
        return int(model.module.config.hidden_size)  # type: ignore[union-attr,arg-type]


def _masked_groups(model: TaskModel, goal: PruneGoal, where: str, data: DataBundle) -> MaskedGroups:
    """DPHuBERT on the decoder layouts (LLaMA-style, OPT, GPT-2): key/value groups (with their query heads) and
    MLP units."""
    from compress.models.decoder_layout import layout_of
    from compress.pruning.masked import DecoderGroups

    for layer in decoder_layers(model.module):
        layout_of(layer, where)
    return DecoderGroups(model, goal)


def _latency_costs(model: TaskModel, device: DeviceProfile, sequence: int, cache_dir: Path, *, precision: str,
                   statistic: str, reference: tuple[DeviceProfile, Path] | None = None) -> LatencyCosts:  # fmt: skip
    from compress.pruning.latency_costs import measure_decoder_costs

    return measure_decoder_costs(model.module.config, device, sequence, cache_dir, precision=precision,
                                 statistic=statistic, reference=reference)  # fmt: skip


def _ffn_blocks(model: TaskModel, where: str) -> list[FfnBlock]:
    """The MLPs: gated SwiGLU ones (`mlp.gate_proj`, `up_proj`, `down_proj`; LaDiMo's own setting) and the plain
    ones of OPT (`fc1` / `fc2`) and GPT-2 (`mlp.c_fc` / `mlp.c_proj`, Conv1D)."""
    from compress.moe.experts import find_ffn_blocks

    return find_ffn_blocks(model.module)


class _Search(m.SupernetSearcher):
    """AutoDistil's Transformer space (layers, hidden, query heads, FFN) over a LLaMA-style teacher."""

    def space(self, space: Space | None, teacher: TaskModel, where: str) -> Space:
        from compress.search.candidates import resolve_decoder_space
        from compress.search.space import TransformerSpace

        space = TransformerSpace() if space is None else space
        if space.kind != "transformer":
            raise ModelError(f"{where}.space: a {space.kind} space does not fit a causal LM; give a Transformer "
                             "space (layers, hidden, heads, ffn).")  # fmt: skip
        if teacher.has_transform(STRUCTURE):
            raise ModelError(f"{where}.space: the teacher has a per-layer pruned structure; search needs a uniform "
                             "teacher.")  # fmt: skip
        return resolve_decoder_space(space, teacher, f"{where}.space")  # type: ignore[arg-type]

    def candidate(self, space: Space, arch: Arch, teacher: TaskModel, *, in_channels: int | None,
                  seed: int) -> TaskModel:  # fmt: skip
        from compress.search.candidates import build_decoder_candidate

        return build_decoder_candidate(arch, teacher, seed=seed)

    def supernet(self, teacher: TaskModel) -> SlicedSuperNet:
        from compress.search.supernet import DecoderSuperNet

        return DecoderSuperNet(teacher.module)

    def student(self, space: Space, arch: Arch, teacher: TaskModel, data: DataBundle, seed: int,
                supernet: Any = None) -> TaskModel:  # fmt: skip
        """The sub-network's weights from AutoDistil's trained super-network."""
        net = supernet if supernet is not None else self.supernet(teacher)
        student = TaskModel(net.extract(arch), "hf", "lm", teacher.num_labels, teacher.tokenizer, {"search": arch})
        return _FAMILY.adopt(student)


class _Qat(m.QatDefaults):
    """Forward KL over the vocabulary: the logits are next-token distributions. 4-bit weight-only (MatMulNBits):
    memory-bound decoding is where low-bit weights pay."""

    weight_bits = (4,)

    def losses(self, model: TaskModel) -> list[LossConfig]:
        from compress.losses.sequence import ForwardKLConfig

        return [ForwardKLConfig(name="fkl", weight=1.0)]


_FAMILY = DecoderFamily()
_NAME = DecoderFamily.name
m.register(m.EXPORT, _NAME, HF, True)
m.register(m.HIDDEN_STATES, _NAME, HF, _Layers())
m.register(m.STUDENT_DECODER, _NAME, HF, True, architectures=LAYER_LAYOUTS)
m.register(m.GRADIENT_CHECKPOINTING, _NAME, HF, True)
m.register(m.MOEFY, _NAME, HF, _ffn_blocks, architectures=LAYER_LAYOUTS)
m.register(m.PRUNE_DPHUBERT, _NAME, HF, _masked_groups, architectures=LAYER_LAYOUTS)
m.register(m.PRUNE_LATENCY, _NAME, HF, _latency_costs, architectures=LAYER_LAYOUTS)
m.register(m.SEARCH_AUTODISTIL, _NAME, HF, _Search(), architectures=LLAMA_LAYOUT)
m.register(m.QUANTIZE_QAT, _NAME, HF, _Qat(_NAME))
m.register(m.QUANTIZE_PTQ, _NAME, HF, True)
m.register(m.LOSSES_SEQUENCE, _NAME, HF, True)
m.register(m.GENERATION, _NAME, HF, True)
