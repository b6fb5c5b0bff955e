"""Causal (decoder) language models: a built-in LLaMA-style architecture for models trained from scratch, and
students sliced from a Hugging Face decoder teacher (chosen layers, optionally narrower)."""

from __future__ import annotations

import copy
import inspect
import logging
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from compress.config import Strict
from compress.errors import ModelError
from compress.models.decoder_layout import find_layout, layout_of
from compress.models.layer_map import evenly_spaced, keep_config_layers
from compress.models.transforms import register_transform
from compress.runtimes.decoding import CacheLayout

log = logging.getLogger("compress")


class LlamaSpec(Strict):
    """A LLaMA-style decoder built from scratch (RoPE, RMSNorm, SwiGLU FFN, grouped-query attention), with the
    data's tokenizer: a teacher trained on the recipe's corpus, or a student of any shape."""

    layers: int = Field(6, gt=0, le=128, description="Decoder layers.")
    hidden: int = Field(384, gt=0, description="Hidden size (a multiple of `heads`).")
    heads: int = Field(6, gt=0, description="Attention (query) heads.")
    kv_heads: int | None = Field(
        None, gt=0, description="Key/value heads (grouped-query attention; must divide `heads`). Default: `heads`."
    )
    ffn: int | None = Field(None, gt=0, description="SwiGLU intermediate size. Default: 8/3 x hidden, rounded to 64.")
    positions: int = Field(2048, gt=0, le=131072, description="Maximum positions (RoPE); at least data.max_length.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the output projection.")

    @model_validator(mode="after")
    def _shapes(self) -> LlamaSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} must divide heads {self.heads}")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"the head size hidden/heads = {self.hidden // self.heads} must be even (RoPE)")
        return self


class DecoderStudentSpec(Strict):
    """A smaller decoder of the teacher's architecture. Unset sizes are copied from the teacher."""

    layers: int = Field(..., gt=0, description="Decoder layers.")
    hidden: int | None = Field(None, gt=0, description="Hidden size (default: the teacher's).")
    heads: int | None = Field(None, gt=0, description="Attention heads (default: the teacher's).")
    kv_heads: int | None = Field(None, gt=0, description="Key/value heads (default: the teacher's, capped at heads).")
    ffn: int | None = Field(None, gt=0, description="FFN intermediate size (default: the teacher's).")
    init_from_layers: list[int] | None = Field(
        None,
        description="Teacher layers (0-based) whose weights initialise the student's layers, one per student layer. "
        "Default: chosen by `layer_choice`. Used when the sizes match the teacher's; otherwise the layers start "
        "from random weights (embeddings, final norm and output head are copied whenever the hidden size matches).",
    )
    layer_choice: Literal["block_influence", "evenly_spaced"] = Field(
        "block_influence",
        description="How the teacher layers are chosen when `init_from_layers` is not given and the sizes match the "
        "teacher's: `block_influence` keeps the layers that change their input most (ShortGPT's Block Influence, "
        "1 - mean cosine between a layer's input and output hidden states, over the first 16 training sequences; "
        "on SmolLM2-135M, 20 of 30 layers start at dev perplexity 70 this way and 4.8e6 evenly spaced); "
        "`evenly_spaced` ends at the teacher's last layer.",
    )


def build_llama(spec: LlamaSpec, vocab_size: int, pad_id: int, eos_id: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    ffn = spec.ffn or 64 * round(8 * spec.hidden / 3 / 64)
    rope: dict[str, Any] = (  # Transformers 5 groups the RoPE settings; 4.x takes rope_theta itself
        {"rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta}}
        if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters
        else {"rope_theta": spec.rope_theta}
    )
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden, intermediate_size=ffn, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads or spec.heads,
        max_position_embeddings=spec.positions, tie_word_embeddings=spec.tie_embeddings,
        pad_token_id=pad_id, bos_token_id=eos_id, eos_token_id=eos_id, attention_bias=False, mlp_bias=False, **rope,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def decoder_layers(model: nn.Module) -> list[Any]:
    """The decoder layer list of a Hugging Face causal LM (`model.layers`: LLaMA, Qwen2, Mistral, SmolLM;
    `transformer.h`: GPT-2; `model.decoder.layers`: OPT)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for holder, name in ((base, "layers"), (base, "h"), (getattr(base, "decoder", None), "layers")):
        layers = getattr(holder, name, None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    raise ModelError(f"{type(model).__name__} has no decoder layer list (`model.layers`, `transformer.h` or "
                     "`model.decoder.layers`).")  # fmt: skip


def layer_prefix(model: nn.Module) -> str:
    """The module path of the decoder layers (`model.layers`), for feature taps: `<prefix>.<i>`."""
    layers = decoder_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(layers[0])].rsplit(".", 1)[0]


def decoder_head_size(cfg: Any) -> int:
    """Channels per attention head (``head_dim`` where the config sets it, else hidden / heads)."""
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def cache_shape(model: nn.Module) -> CacheLayout:
    """The KV cache of a Hugging Face causal LM: layers, key/value heads of each layer (a pruned layer has fewer
    heads than the config says), head size."""
    cfg: Any = model.config
    head_dim = decoder_head_size(cfg)
    layers = decoder_layers(model)
    layouts = [find_layout(layer) for layer in layers]
    if all(layout is not None for layout in layouts):  # per layer: a pruned layer may keep fewer heads
        kv = [int(layout.read(layer)["k"][0].shape[0] // head_dim)  # type: ignore[union-attr]
              for layer, layout in zip(layers, layouts, strict=True)]  # fmt: skip
    else:  # another arrangement (Phi-3's fused qkv_proj): nothing resizes its layers, the config says
        kv = [int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)] * len(layers)
    return CacheLayout(len(kv), kv, head_dim)


def build_decoder_student(teacher: nn.Module, spec: DecoderStudentSpec) -> nn.Module:
    """The student from the teacher's config, with the teacher's embeddings, final norm, head and chosen layers
    where the sizes allow."""
    from transformers import AutoModelForCausalLM

    tcfg: Any = teacher.config
    t_layers = decoder_layers(teacher)
    cfg = copy.deepcopy(tcfg)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    t_kv = getattr(tcfg, "num_key_value_heads", None) or tcfg.num_attention_heads
    layer_map = spec.init_from_layers or evenly_spaced(spec.layers, len(t_layers))
    if len(layer_map) != spec.layers or not all(0 <= i < len(t_layers) for i in layer_map):
        raise ModelError(f"init_from_layers={layer_map} must list {spec.layers} teacher layers in "
                         f"0..{len(t_layers) - 1}.")  # fmt: skip
    keep_config_layers(cfg, layer_map)
    cfg.hidden_size = spec.hidden or tcfg.hidden_size
    cfg.num_attention_heads = spec.heads or tcfg.num_attention_heads
    if hasattr(tcfg, "num_key_value_heads"):
        cfg.num_key_value_heads = spec.kv_heads or min(t_kv, cfg.num_attention_heads)
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ModelError(f"student heads={cfg.num_attention_heads} is not a multiple of kv_heads="
                             f"{cfg.num_key_value_heads}; choose kv_heads that divides heads.")  # fmt: skip
    elif spec.kv_heads:
        raise ModelError(f"kv_heads: the teacher ({type(teacher).__name__}) has no grouped-query attention.")
    ffn_key = next((k for k in ("intermediate_size", "ffn_dim", "n_inner") if hasattr(tcfg, k)), "n_inner")
    if spec.ffn:  # LLaMA-style and Phi-3: intermediate_size; OPT: ffn_dim; GPT-2: n_inner
        setattr(cfg, ffn_key, spec.ffn)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ModelError(f"student hidden={cfg.hidden_size} is not divisible by heads={cfg.num_attention_heads}; "
                         "choose sizes where hidden % heads == 0.")  # fmt: skip
    if getattr(cfg, "head_dim", None) is not None and spec.hidden is not None:
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    student = AutoModelForCausalLM.from_config(cfg)
    same_width = cfg.hidden_size == tcfg.hidden_size
    shape = ("num_attention_heads", "num_key_value_heads", ffn_key)
    same_layers = same_width and all(getattr(cfg, a, None) == getattr(tcfg, a, None) for a in shape)
    if same_width:
        t_state, s_state = teacher.state_dict(), student.state_dict()
        prefix = layer_prefix(teacher) + "."
        copied = {k: v for k, v in t_state.items() if not k.startswith(prefix) and k in s_state}
        if same_layers:
            s_layers = decoder_layers(student)
            for s_i, t_i in enumerate(layer_map):
                at = f"{prefix}{t_i}."
                s_layers[s_i].load_state_dict({k[len(at) :]: v for k, v in t_state.items() if k.startswith(at)})
        student.load_state_dict({**s_state, **copied}, strict=False)
    log.info(
        "student: %d layers, hidden %d, heads %d; init: %s", spec.layers, cfg.hidden_size, cfg.num_attention_heads,
        f"teacher layers {layer_map}" if same_layers else "embeddings and head copied" if same_width else "random",
    )  # fmt: skip
    return student


# ---- per-layer structure (pruned decoders) -----------------------------------------------------------------------
STRUCTURE = "decoder_structure"  # the model transform that resizes each layer on load (args: the structure)


def decoder_structure(model: nn.Module) -> dict[str, list[int]]:
    """Key/value heads and FFN units of every decoder layer, read from the modules themselves."""
    d = decoder_head_size(model.config)
    weights = [layout_of(layer).read(layer) for layer in decoder_layers(model)]
    return {"kv_heads": [int(w["k"][0].shape[0] // d) for w in weights],
            "ffn": [int(w["down"][0].shape[1]) for w in weights]}  # fmt: skip


def drop_decoder_layers(model: nn.Module, removed: list[int]) -> None:
    """Delete decoder layers (by index) in place; the others are renumbered (their cache slots, the config's layer
    count and per-layer types), so the model saves and reloads with its new depth."""
    layers = decoder_layers(model)
    if len(removed) >= len(layers):
        raise ModelError(f"cannot remove all {len(layers)} decoder layers.")
    holder_path = layer_prefix(model)
    holder = model.get_submodule(holder_path.rsplit(".", 1)[0]) if "." in holder_path else model
    kept = [layer for i, layer in enumerate(layers) if i not in set(removed)]
    setattr(holder, holder_path.rsplit(".", 1)[-1], nn.ModuleList(kept))
    for i, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = i
    keep_config_layers(model.config, [i for i in range(len(layers)) if i not in set(removed)])


def resize_decoder(model: nn.Module, structure: dict[str, list[int]]) -> None:
    """Give each decoder layer ``kv_heads[i]`` key/value heads (and their query heads) and ``ffn[i]`` MLP units
    (new, uninitialised weights: a state dict is loaded next). The query-per-key ratio and the head size stay the
    model's; the layer's layout sets whatever per-layer head count its attention reads."""
    cfg: Any = model.config
    layers = decoder_layers(model)
    kv, ffn = structure["kv_heads"], structure["ffn"]
    if len(kv) != len(layers) or len(ffn) != len(layers):
        raise ModelError(f"structure has {len(kv)} kv_heads / {len(ffn)} ffn entries for {len(layers)} layers.")
    heads = cfg.num_attention_heads
    g = heads // (getattr(cfg, "num_key_value_heads", None) or heads)
    d = decoder_head_size(cfg)
    for layer, n, f in zip(layers, kv, ffn, strict=True):
        if n <= 0 or f <= 0:
            raise ModelError(f"a decoder layer keeps at least one key/value head and one FFN unit (got {n}, {f}).")
        layout = layout_of(layer)
        old = layout.read(layer)
        # the rows of the input projections, the columns of the output ones
        rows, cols = {"q": n * g * d, "k": n * d, "v": n * d, "gate": f, "up": f}, {"o": n * g * d, "down": f}
        new = {}
        for name, (w, b) in old.items():
            shape = (rows[name], w.shape[1]) if name in rows else (w.shape[0], cols[name])
            new[name] = (w.new_empty(shape), None if b is None else b.new_empty(shape[0]))
        layout.write(layer, new, heads=n * g)


def _resize_on_load(module: nn.Module, structure: dict[str, list[int]]) -> None:
    resize_decoder(module, structure)


register_transform(STRUCTURE)(_resize_on_load)
