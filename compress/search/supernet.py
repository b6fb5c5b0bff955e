"""A weight-sharing super-network over a BERT-family encoder: every sub-network is a slice of its weights.

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
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from compress.errors import ModelError
from compress.models.bert import default_layer_map
from compress.models.structure import encoder_layers, head_size
from compress.search.candidates import build_transformer
from compress.search.space import Arch, arch_key

_LAYER = re.compile(r"\.encoder\.layer\.(\d+)\.")


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


class SuperNet(nn.Module):
    """The shared weights (a rewired copy of the teacher) and the sliced forward of any sub-network."""

    def __init__(self, teacher_module: nn.Module) -> None:
        super().__init__()
        cfg = teacher_module.config  # type: ignore[attr-defined]
        if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
            raise ModelError("the AutoDistil super-network supports absolute position embeddings only.")
        self.model = copy.deepcopy(teacher_module).requires_grad_(True)
        self.config: Any = self.model.config
        self.n_layers = len(encoder_layers(self.model))
        rewire(self.model)
        self._skeletons: dict[str, nn.Module] = {}

    def skeleton(self, arch: Arch) -> nn.Module:
        """The sub-network's module on the meta device (shapes only; weights come from the super-network)."""
        key = arch_key(arch)
        if key not in self._skeletons:
            self._skeletons[key] = build_transformer(self.config, arch, meta=True)
        return self._skeletons[key]

    def sliced_state(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Sub-network tensor name -> slice (a view) of the matching super-network tensor."""
        layer_map = default_layer_map(arch["layers"], self.n_layers)
        full = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        sub = self.skeleton(arch)
        out = {}
        for name, t in [*sub.named_parameters(), *sub.named_buffers()]:
            src = _LAYER.sub(lambda m: f".encoder.layer.{layer_map[int(m.group(1))]}.", name)
            big = full[src]
            out[name] = big[tuple(slice(0, n) for n in t.shape)] if t.dim() else big
        return out

    def forward_sub(self, arch: Arch, inputs: dict[str, torch.Tensor]) -> Any:
        sub = self.skeleton(arch)
        sub.train(self.training)
        return functional_call(sub, self.sliced_state(arch), args=(), kwargs=inputs, strict=True)

    def qkv_paths(self, arch: Arch) -> list[str]:
        """Module paths of the sub-network's last-layer query, key and value projections."""
        prefix = self.model.base_model_prefix
        return [f"{prefix}.encoder.layer.{arch['layers'] - 1}.attention.self.{p}" for p in ("query", "key", "value")]

    @torch.no_grad()
    def extract(self, arch: Arch) -> nn.Module:
        """A standalone Hugging Face model holding copies of the sub-network's weights."""
        model = build_transformer(self.config, arch)
        state = {k: v.detach().clone() for k, v in self.sliced_state(arch).items()}
        model.load_state_dict(state, strict=False)
        missing = set(model.state_dict()) - set(state)
        if missing:
            raise ModelError(f"sub-network weights not found in the super-network: {sorted(missing)[:3]}")
        return model.eval()
