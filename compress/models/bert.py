"""BERT-style students sized by layers / hidden / heads / FFN, initialised from chosen teacher layers."""

from __future__ import annotations

import copy
import logging
from typing import Any

from pydantic import Field
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from compress.config import Strict
from compress.errors import ModelError
from compress.models.bnb import float_state_dict, is_bnb
from compress.models.layer_map import evenly_spaced as default_layer_map
from compress.models.structure import encoder_layers

log = logging.getLogger("compress")


class BertStudentSpec(Strict):
    """A smaller encoder of the teacher's family. Unset sizes are copied from the teacher."""

    layers: int = Field(..., gt=0, description="Number of Transformer layers.")
    hidden: int | None = Field(None, gt=0, description="Hidden size (default: the teacher's).")
    heads: int | None = Field(None, gt=0, description="Attention heads (default: the teacher's).")
    ffn: int | None = Field(None, gt=0, description="FFN intermediate size (default: the teacher's).")
    init_from_layers: list[int] | None = Field(
        None,
        description="Teacher layers (0-based) whose weights initialise the student's layers, one per student "
        "layer. Default: evenly spaced, ending at the teacher's last layer. Only used when the sizes match the "
        "teacher's; otherwise the student starts from random weights (embeddings are always copied when "
        "the hidden size matches).",
    )


def use_eager_attention(module: Any) -> None:
    """Run attention as explicit MatMul/Softmax (not SDPA): it then returns its probabilities (attention-map
    distillation) and exports to the graph that runtimes' attention fusions match."""
    setter = getattr(module, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter("eager")
        except ValueError as exc:
            log.debug("keeping the model's attention implementation: %s", exc)


def _layers_of(model: PreTrainedModel) -> list[Any]:
    try:
        return encoder_layers(model)
    except ModelError:
        raise ModelError(
            f"the teacher ({type(model).__name__}) has no `<base>.encoder.layer` list; built-in BERT students "
            "need a BERT-family teacher. Use `student: {hf: ...}` or `student: {python: ...}` instead."
        ) from None


def build_bert_student(teacher: PreTrainedModel, spec: BertStudentSpec) -> PreTrainedModel:
    """Build the student from the teacher's config, copying embeddings, chosen layers and the head."""
    tcfg = teacher.config
    t_layers = _layers_of(teacher)
    cfg = copy.deepcopy(tcfg)
    if hasattr(cfg, "quantization_config"):  # a bitsandbytes teacher: the student is a float model
        del cfg.quantization_config
    cfg.num_hidden_layers = spec.layers
    cfg.hidden_size = spec.hidden or tcfg.hidden_size
    cfg.num_attention_heads = spec.heads or tcfg.num_attention_heads
    cfg.intermediate_size = spec.ffn or tcfg.intermediate_size
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(
            f"student hidden={cfg.hidden_size} is not divisible by heads={cfg.num_attention_heads}; "
            "choose sizes where hidden % heads == 0."
        )
    layer_map = spec.init_from_layers or default_layer_map(spec.layers, len(t_layers))
    if len(layer_map) != spec.layers or not all(0 <= i < len(t_layers) for i in layer_map):
        raise ModelError(
            f"init_from_layers={layer_map} must list {spec.layers} teacher layers in 0..{len(t_layers) - 1}."
        )
    student = AutoModelForSequenceClassification.from_config(cfg)
    same_width = cfg.hidden_size == tcfg.hidden_size
    same_layers = same_width and (cfg.num_attention_heads, cfg.intermediate_size) == (
        tcfg.num_attention_heads,
        tcfg.intermediate_size,
    )
    if same_width:
        t_state = float_state_dict(teacher) if is_bnb(teacher) else teacher.state_dict()
        s_state = student.state_dict()
        prefix = teacher.base_model_prefix
        copied = {k: v for k, v in t_state.items() if not k.startswith(f"{prefix}.encoder.") and k in s_state}
        if same_layers:
            s_layers = _layers_of(student)
            names = {id(m): n for n, m in teacher.named_modules()}
            for s_i, t_i in enumerate(layer_map):
                at = names[id(t_layers[t_i])] + "."
                s_layers[s_i].load_state_dict({k[len(at) :]: v for k, v in t_state.items() if k.startswith(at)})
        student.load_state_dict({**s_state, **copied})
    log.info(
        "student: %d layers, hidden %d, heads %d, ffn %d; init: %s",
        spec.layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.intermediate_size,
        f"teacher layers {layer_map}" if same_layers else "embeddings copied" if same_width else "random",
    )
    return student
