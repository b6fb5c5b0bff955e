"""Encoder students made of the teacher's own layers (any Hugging Face encoder with a layer list: BERT, RoBERTa,
ELECTRA, DistilBERT, DeBERTa-v2, ModernBERT; ALBERT's shared layer run fewer times), and for BERT's layout also
narrower ones (hidden / heads / FFN)."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from pydantic import Field

from compress.config import Strict
from compress.errors import ModelError
from compress.models.bnb import float_state_dict, is_bnb
from compress.models.layer_map import evenly_spaced as default_layer_map
from compress.models.layer_map import keep_config_layers
from compress.models.structure import BERT_LAYOUT, encoder_layer_path, encoder_layers

if TYPE_CHECKING:  # transformers' modeling code takes about 5 s to import: only when a model is built
    from transformers import PreTrainedModel

log = logging.getLogger("compress")


class BertStudentSpec(Strict):
    """A smaller encoder of the teacher's architecture. Unset sizes are copied from the teacher; `hidden`, `heads`
    and `ffn` resize BERT's layout only (BERT, RoBERTa, XLM-R, ELECTRA), other encoders keep the teacher's sizes."""

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
            f"the teacher ({type(model).__name__}) has no encoder layer list; built-in `bert` students are made of a "
            "Hugging Face encoder teacher's layers. Use `student: {hf: ...}` or `student: {python: ...}` instead."
        ) from None


def _load_layer(layer: Any, state: dict[str, Any], s_i: int, t_i: int) -> None:
    """Teacher layer ``t_i``'s weights into student layer ``s_i``. A layer may lack what the teacher's has by
    position: ModernBERT's first layer has no attention pre-norm (its embeddings end in one), so a deeper teacher
    layer placed first loses that norm's gain (logged); anything else missing is an error."""
    result = layer.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ModelError(f"student layer {s_i} has weights teacher layer {t_i} lacks: {result.missing_keys[:3]}")
    if result.unexpected_keys:
        log.info("student layer %d has no %s: teacher layer %d's are not used", s_i,
                 ", ".join(result.unexpected_keys), t_i)  # fmt: skip


def _albert_student(teacher: PreTrainedModel, spec: BertStudentSpec) -> PreTrainedModel:
    """ALBERT runs one shared layer ``num_hidden_layers`` times: its student is the same weights run fewer times
    (the same parameters, less compute per token)."""
    tcfg: Any = teacher.config
    resized = [k for k in ("hidden", "heads", "ffn") if getattr(spec, k) is not None]
    if resized or getattr(tcfg, "num_hidden_groups", 1) != 1:
        raise ModelError(f"student.bert: an ALBERT student runs the teacher's shared layer fewer times; give `layers` "
                         f"only (got {', '.join(resized) or 'a teacher of several layer groups'}).")  # fmt: skip
    if spec.init_from_layers is not None:
        raise ModelError("student.bert.init_from_layers: ALBERT's layers are one shared layer; give `layers` only.")
    cfg = copy.deepcopy(tcfg)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.num_hidden_layers = spec.layers
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_config(cfg)
    student.load_state_dict(float_state_dict(teacher) if is_bnb(teacher) else teacher.state_dict())
    log.info("student: the teacher's shared ALBERT layer run %d times (the teacher: %d)", spec.layers,
             tcfg.num_hidden_layers)  # fmt: skip
    return student


def build_bert_student(teacher: PreTrainedModel, spec: BertStudentSpec) -> PreTrainedModel:
    """Build the student from the teacher's config, copying embeddings, chosen layers and the head."""
    tcfg = teacher.config
    if getattr(tcfg, "model_type", None) == "albert":
        return _albert_student(teacher, spec)
    t_layers = _layers_of(teacher)
    model_type = getattr(tcfg, "model_type", None)
    resized = {k: v for k, v in (("hidden", spec.hidden), ("heads", spec.heads), ("ffn", spec.ffn)) if v is not None}
    if model_type not in BERT_LAYOUT and resized:
        raise ModelError(f"student.bert: {', '.join(resized)} resize BERT's layout ({', '.join(BERT_LAYOUT)}); a "
                         f"{model_type} student keeps the teacher's sizes: give `layers` and `init_from_layers` "
                         "only.")  # fmt: skip
    cfg = copy.deepcopy(tcfg)
    if hasattr(cfg, "quantization_config"):  # a bitsandbytes teacher: the student is a float model
        del cfg.quantization_config
    layer_map = spec.init_from_layers or default_layer_map(spec.layers, len(t_layers))
    if len(layer_map) != spec.layers or not all(0 <= i < len(t_layers) for i in layer_map):
        raise ModelError(
            f"init_from_layers={layer_map} must list {spec.layers} teacher layers in 0..{len(t_layers) - 1}."
        )
    keep_config_layers(cfg, layer_map)
    cfg.hidden_size = spec.hidden or tcfg.hidden_size
    cfg.num_attention_heads = spec.heads or tcfg.num_attention_heads
    if spec.ffn:
        cfg.intermediate_size = spec.ffn
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(
            f"student hidden={cfg.hidden_size} is not divisible by heads={cfg.num_attention_heads}; "
            "choose sizes where hidden % heads == 0."
        )
    from transformers import AutoModelForSequenceClassification

    student = AutoModelForSequenceClassification.from_config(cfg)
    same_width = cfg.hidden_size == tcfg.hidden_size
    shape = ("num_attention_heads", "intermediate_size")  # DistilBERT's FFN size is `hidden_dim`: never resized
    same_layers = same_width and all(getattr(cfg, a, None) == getattr(tcfg, a, None) for a in shape)
    if same_width:
        t_state = float_state_dict(teacher) if is_bnb(teacher) else teacher.state_dict()
        s_state = student.state_dict()
        prefix = encoder_layer_path(teacher) + "."
        copied = {k: v for k, v in t_state.items() if not k.startswith(prefix) and k in s_state}
        if same_layers:
            s_layers = _layers_of(student)
            names = {id(m): n for n, m in teacher.named_modules()}
            for s_i, t_i in enumerate(layer_map):
                at = names[id(t_layers[t_i])] + "."
                _load_layer(s_layers[s_i], {k[len(at) :]: v for k, v in t_state.items() if k.startswith(at)}, s_i, t_i)
        student.load_state_dict({**s_state, **copied})
    log.info(
        "student: %d layers, hidden %d, heads %d, ffn %s; init: %s",
        spec.layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        getattr(cfg, "intermediate_size", "the teacher's"),
        f"teacher layers {layer_map}" if same_layers else "embeddings copied" if same_width else "random",
    )
    return student
