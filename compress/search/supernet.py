"""Weight-sharing super-networks over a BERT-family encoder or a LLaMA-style decoder: every sub-network is a
slice of its weights.

A sub-network ``{layers, hidden, heads, ffn}`` uses evenly spaced layers of the super-network (the same map
as layer-dropped students: 3 of 6 -> layers 1, 3, 5), the first ``hidden`` channels of every hidden-size
dimension, the first ``heads`` attention heads and the first ``ffn`` FFN units of each layer. Its forward
pass is the Hugging Face module of that shape run by ``torch.func.functional_call`` on slices (views) of the
super-network's tensors, so gradients of every sampled sub-network accumulate in the shared weights, and
`extract` copies exactly those slices into a standalone model.

The super-network starts from the teacher's weights, rewired (as in DynaBERT) so that slices keep the most
important units: heads and FFN units of every layer are reordered by weight magnitude, which leaves the
teacher's function unchanged. Hidden channels are not reordered (they cross every layer through the residual
stream); super-network training adapts them.
"""

from __future__ import annotations

import copy
import re
from abc import ABCMeta, abstractmethod
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from compress.errors import ModelError
from compress.models.bert import default_layer_map
from compress.models.decoder import decoder_head_size, decoder_layers, evenly_spaced, layer_prefix
from compress.models.structure import encoder_layers, head_size
from compress.search.candidates import build_decoder, build_transformer
from compress.search.space import Arch, arch_key


def _reorder_rows(linear: nn.Linear, order: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[order].contiguous()
    if linear.bias is not None:
        linear.bias.data = linear.bias.data[order].contiguous()


def _reorder_cols(linear: nn.Linear, order: torch.Tensor) -> None:
    linear.weight.data = linear.weight.data[:, order].contiguous()


@torch.no_grad()
def rewire(model: nn.Module) -> None:
    """Reorder heads and FFN units of every layer by importance, most important first (function-preserving)."""
    d = head_size(model.config)  # type: ignore[attr-defined]
    for layer in encoder_layers(model):
        attn, out = layer.attention.self, layer.attention.output.dense
        n = attn.query.out_features // d
        v_norm = attn.value.weight.view(n, d, -1).pow(2).sum((1, 2))
        o_norm = out.weight.view(out.out_features, n, d).pow(2).sum((0, 2))
        heads = torch.argsort((v_norm * o_norm).sqrt(), descending=True)
        rows = (heads[:, None] * d + torch.arange(d)).reshape(-1)
        for lin in (attn.query, attn.key, attn.value):
            _reorder_rows(lin, rows)
        _reorder_cols(out, rows)
        inter, down = layer.intermediate.dense, layer.output.dense
        units = torch.argsort(inter.weight.norm(dim=1) * down.weight.norm(dim=0), descending=True)
        _reorder_rows(inter, units)
        _reorder_cols(down, units)


def _own_scalar(sub: nn.Module, name: str, teacher_value: torch.Tensor) -> torch.Tensor:
    """A scalar buffer of the sub-network: the teacher's, except where the model computes it from its own shape
    and never saves it (Gemma's embedding scale, sqrt(hidden), which a model extracted at a narrower hidden size
    recomputes on load). Transformers keeps such a value as a plain float, `scalar_<buffer>`, beside the buffer;
    the skeleton is on the meta device, so that float is the only place its value survives."""
    path, _, attr = name.rpartition(".")
    module = sub.get_submodule(path)
    value = getattr(module, f"scalar_{attr}", None)
    if attr in getattr(module, "_non_persistent_buffers_set", ()) and isinstance(value, int | float):
        return torch.tensor(value, dtype=teacher_value.dtype)
    return teacher_value


class SlicedSuperNet(nn.Module, metaclass=ABCMeta):
    """The shared weights (a rewired copy of the teacher) and the sliced forward of any sub-network. A subclass
    says how the family's layers are named, rewired and built at a given shape."""

    layer_pattern: re.Pattern[str]  # the layer index inside parameter names
    causal = False  # whether the relations of the attention are causal (decoders)

    def __init__(self, teacher_module: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(teacher_module).requires_grad_(True)
        self.config: Any = self.model.config
        self.n_layers = len(self.layers(self.model))
        self.rewire(self.model)
        self._skeletons: dict[str, nn.Module] = {}

    # ---- what a subclass gives ----------------------------------------------------------------------------------
    @abstractmethod
    def layers(self, model: nn.Module) -> list[Any]:
        """The model's Transformer layers, input to output."""

    @abstractmethod
    def rewire(self, model: nn.Module) -> None:
        """Reorder the model's prunable units by importance, in place, keeping its function."""

    @abstractmethod
    def build(self, arch: Arch, *, meta: bool) -> nn.Module:
        """A model of the arch's shape (random weights, or shapes only on the meta device)."""

    def layer_map(self, arch: Arch) -> list[int]:
        return default_layer_map(arch["layers"], self.n_layers)

    @abstractmethod
    def qkv_paths(self, arch: Arch) -> list[str]:
        """Module paths of the sub-network's last-layer query, key and value projections."""

    # ---- shared --------------------------------------------------------------------------------------------------
    def teacher_qkv_paths(self) -> list[str]:
        """The teacher's own last-layer query, key and value projections (the same paths in the teacher)."""
        return self.qkv_paths({"layers": self.n_layers})

    def skeleton(self, arch: Arch) -> nn.Module:
        """The sub-network's module on the meta device (shapes only; weights come from the super-network)."""
        key = arch_key(arch)
        if key not in self._skeletons:
            self._skeletons[key] = self.build(arch, meta=True)
        return self._skeletons[key]

    def sliced_state(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Sub-network tensor name -> slice (a view) of the matching super-network tensor."""
        layer_map = self.layer_map(arch)
        full = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        sub = self.skeleton(arch)
        out = {}
        for name, t in [*sub.named_parameters(), *sub.named_buffers()]:
            m = self.layer_pattern.search(name)
            src = name if m is None else f"{name[: m.start(1)]}{layer_map[int(m.group(1))]}{name[m.end(1) :]}"
            big = full[src]
            out[name] = big[tuple(slice(0, n) for n in t.shape)] if t.dim() else _own_scalar(sub, name, big)
        return out


    def forward_sub(self, arch: Arch, inputs: dict[str, torch.Tensor]) -> Any:
        sub = self.skeleton(arch)
        sub.train(self.training)
        return functional_call(sub, self.sliced_state(arch), args=(), kwargs=inputs, strict=True)

    @torch.no_grad()
    def extract(self, arch: Arch) -> nn.Module:
        """A standalone Hugging Face model holding copies of the sub-network's weights."""
        model = self.build(arch, meta=False)
        state = {k: v.detach().clone() for k, v in self.sliced_state(arch).items()}
        model.load_state_dict(state, strict=False)
        missing = set(dict(model.named_parameters())) - set(state)  # tied weights are named once
        if missing:
            raise ModelError(f"sub-network weights not found in the super-network: {sorted(missing)[:3]}")
        return model.eval()


class SuperNet(SlicedSuperNet):
    """AutoDistil's super-network over a BERT-family encoder."""

    layer_pattern = re.compile(r"\.encoder\.layer\.(\d+)\.")

    def __init__(self, teacher_module: nn.Module) -> None:
        cfg = teacher_module.config  # type: ignore[attr-defined]
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ModelError("the AutoDistil super-network supports absolute position embeddings only.")
        super().__init__(teacher_module)

    def layers(self, model: nn.Module) -> list[Any]:
        return encoder_layers(model)

    def rewire(self, model: nn.Module) -> None:
        rewire(model)

    def build(self, arch: Arch, *, meta: bool) -> nn.Module:
        return build_transformer(self.config, arch, meta=meta)

    def qkv_paths(self, arch: Arch) -> list[str]:
        prefix = self.model.base_model_prefix
        return [f"{prefix}.encoder.layer.{arch['layers'] - 1}.attention.self.{p}" for p in ("query", "key", "value")]


@torch.no_grad()
def rewire_decoder(model: nn.Module) -> None:
    """Reorder key/value groups (a key/value head with its query heads) and SwiGLU units of every layer by
    importance, most important first (function-preserving: query head ``i`` keeps key/value head ``i // g``)."""
    cfg: Any = model.config
    d = decoder_head_size(cfg)
    for layer in decoder_layers(model):
        a, m = layer.self_attn, layer.mlp
        kv = a.k_proj.out_features // d
        g = a.q_proj.out_features // d // kv
        v_norm = a.v_proj.weight.view(kv, d, -1).pow(2).sum((1, 2))
        o_norm = a.o_proj.weight.view(a.o_proj.out_features, kv, g * d).pow(2).sum((0, 2))
        groups = torch.argsort((v_norm * o_norm).sqrt(), descending=True)
        kv_rows = (groups[:, None] * d + torch.arange(d)).reshape(-1)
        q_rows = (groups[:, None] * (g * d) + torch.arange(g * d)).reshape(-1)
        for lin in (a.k_proj, a.v_proj):
            _reorder_rows(lin, kv_rows)
        _reorder_rows(a.q_proj, q_rows)
        _reorder_cols(a.o_proj, q_rows)
        gate, up, down = m.gate_proj, m.up_proj, m.down_proj
        units = torch.argsort(gate.weight.norm(dim=1) * up.weight.norm(dim=1) * down.weight.norm(dim=0),
                              descending=True)  # fmt: skip
        for lin in (gate, up):
            _reorder_rows(lin, units)
        _reorder_cols(down, units)


class DecoderSuperNet(SlicedSuperNet):
    """AutoDistil's super-network over a LLaMA-style causal LM (grouped-query attention, SwiGLU). A sub-network
    ``{layers, hidden, heads, ffn}`` takes the first ``heads`` query heads with their key/value heads (``heads``
    is a multiple of the teacher's query heads per key/value head), the teacher's head size, the first ``hidden``
    channels and ``ffn`` SwiGLU units; its relations are causal."""

    layer_pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.")
    causal = True

    def layers(self, model: nn.Module) -> list[Any]:
        return decoder_layers(model)

    def rewire(self, model: nn.Module) -> None:
        rewire_decoder(model)

    def build(self, arch: Arch, *, meta: bool) -> nn.Module:
        return build_decoder(self.config, arch, meta=meta)

    def layer_map(self, arch: Arch) -> list[int]:
        return evenly_spaced(arch["layers"], self.n_layers)

    def qkv_paths(self, arch: Arch) -> list[str]:
        prefix = layer_prefix(self.model)
        return [f"{prefix}.{arch['layers'] - 1}.self_attn.{p}_proj" for p in ("q", "k", "v")]
