"""Dense FFN -> Mixture-of-Experts (LaDiMo stage 1): the FFN's intermediate neurons split into E equal groups,
each group an expert; all experts together are the dense FFN exactly. A router per layer picks experts per
token; tokens are grouped per expert (gather, expert MLP, scatter-add), so compute falls with fewer active
experts on any runtime, ONNX included.

Equal-size experts: onnxruntime then runs E MatMuls of the same shape, and a policy's cost is simply the
number of active experts. Clustering is balanced k-means on the neurons' features: their input weights
(`weights`) or their activation pattern over calibration tokens (`coactivation`, MoEfication's choice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.errors import ModelError


@dataclass
class FfnBlock:
    """One FFN of a layer, whatever its module arrangement (`find_ffn_blocks`): ``act(x W_in^T + b_in)`` (gated:
    ``act(x W_gate^T) * (x W_in^T + b_in)``), then ``W_out``. ``w_in`` / ``w_out`` / ``w_gate`` are the modules:
    ``nn.Linear``, or transformers' transposed ``Conv1D`` (GPT-2; ``transposed``). ``slot`` is where the MoE goes
    in the layer and ``cleared`` the modules that become Identity after it (the MoE returns the FFN's output).
    ``reads``: the model's module that takes the FFN's input, where ``w_in`` is a copy outside the model (a half of
    Phi-3's fused projection); ``w_in`` itself otherwise."""

    path: str  # the layer's module path
    layer: nn.Module
    w_in: nn.Module
    w_out: nn.Module
    act: Callable[[torch.Tensor], torch.Tensor]
    w_gate: nn.Module | None = None
    slot: str = "intermediate"
    cleared: tuple[str, ...] = ("output.dense",)
    transposed: bool = False
    reads: nn.Module | None = None

    @property
    def input_module(self) -> nn.Module:
        """The module of the model whose forward input is the FFN's input (calibration hooks go there)."""
        return self.w_in if self.reads is None else self.reads

    def weight(self, module: nn.Module) -> torch.Tensor:
        """``module``'s weight as ``[out, in]``."""
        w: torch.Tensor = module.weight  # type: ignore[assignment]
        return w.t() if self.transposed else w

    @property
    def inner(self) -> int:
        """The FFN's width (its neurons)."""
        return int(self.weight(self.w_in).shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight(self.w_in).shape[1])

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN's intermediate activations (what its neurons output)."""
        h = self.w_in(x)
        return self.act(self.w_gate(x)) * h if self.w_gate is not None else self.act(h)


# The FFN arrangements moefy reads, by the layer's attributes: (slot the MoE takes, input, output, gate or None,
# activation, modules cleared after the MoE). Gated LLaMA-style decoders (SwiGLU `mlp`), BERT-family encoders (BERT,
# RoBERTa, ELECTRA, MiniLM, DeBERTa-v2, ...), OPT (`fc1` / `fc2` on the layer), GPT-2 (`mlp.c_fc` / `mlp.c_proj`,
# Conv1D), DistilBERT (`ffn.lin1` / `ffn.lin2`) and ALBERT (`ffn` / `ffn_output` of its shared layer); Phi-3's and
# ModernBERT's fused GLUs are read by `_fused_gated`.
_ARRANGEMENTS = (
    ("mlp", "mlp.up_proj", "mlp.down_proj", "mlp.gate_proj", "mlp.act_fn", ()),
    ("intermediate", "intermediate.dense", "output.dense", None, "intermediate.intermediate_act_fn",
     ("output.dense",)),
    ("fc1", "fc1", "fc2", None, "activation_fn", ("fc2", "activation_fn")),
    ("mlp.c_fc", "mlp.c_fc", "mlp.c_proj", None, "mlp.act", ("mlp.c_proj", "mlp.act")),
    ("ffn.lin1", "ffn.lin1", "ffn.lin2", None, "ffn.activation", ("ffn.lin2", "ffn.activation")),
    ("ffn", "ffn", "ffn_output", None, "activation", ("ffn_output", "activation")),
)  # fmt: skip
SLOTS = tuple(a[0] for a in _ARRANGEMENTS)


def _get(module: nn.Module, dotted: str) -> Any:
    for name in dotted.split("."):
        module = getattr(module, name, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module


def _weighted(module: Any) -> bool:
    """A Linear, or a Conv1D-like module with a 2-D weight (not Identity: an FFN already converted)."""
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Module) and isinstance(weight, torch.Tensor) and weight.dim() == 2


# fused GLU MLPs: (fused input projection, output projection, activation); ``act`` applies to the first half of the
# fused rows, which multiplies the second: Phi-3 (`gate_up_proj`) and ModernBERT (`Wi`)
_FUSED = (("mlp.gate_up_proj", "mlp.down_proj", "mlp.activation_fn"), ("mlp.Wi", "mlp.Wo", "mlp.act"))


def _fused_gated(path: str, layer: nn.Module) -> FfnBlock | None:
    """A fused GLU MLP (`_FUSED`). The block reads the two halves as separate modules (copies; the MoE replaces the
    whole ``mlp``)."""
    found = next((m for names in _FUSED if isinstance((m := [_get(layer, n) for n in names])[0], nn.Linear)), None)
    if found is None:
        return None
    fused, down, act = found
    if not (isinstance(down, nn.Linear) and callable(act)):
        return None
    halves = []
    for w, b in zip(fused.weight.detach().chunk(2), (None, None) if fused.bias is None else fused.bias.chunk(2),
                    strict=True):  # fmt: skip
        half = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            half.weight.copy_(w)
            if b is not None:
                half.bias.copy_(b)
        halves.append(half)
    return FfnBlock(path, layer, halves[1], down, act, halves[0], "mlp", (), reads=fused)


def _block(path: str, layer: nn.Module) -> FfnBlock | None:
    if (fused := _fused_gated(path, layer)) is not None:
        return fused
    for slot, w_in, w_out, w_gate, act, cleared in _ARRANGEMENTS:
        modules = [_get(layer, n) for n in (w_in, w_out)] + ([_get(layer, w_gate)] if w_gate else [])
        if not all(_weighted(x) for x in modules):
            continue
        fn = _get(layer, act)
        if not callable(fn):
            raise ModelError(f"moefy: {path}.{act.rpartition('.')[0] or act} has no activation `{act}`; cannot "
                             "split its FFN.")  # fmt: skip
        transposed = not isinstance(modules[0], nn.Linear)  # transformers' Conv1D: weight [in, out]
        return FfnBlock(path, layer, modules[0], modules[1], fn, modules[2] if w_gate else None, slot, cleared,
                        transposed)  # fmt: skip
    return None


def find_ffn_blocks(module: nn.Module) -> list[FfnBlock]:
    """The FFN blocks of every layer (`_ARRANGEMENTS`); a clear error naming the model when there are none."""
    blocks = [b for path, sub in module.named_modules() if (b := _block(path, sub)) is not None]
    if not blocks:
        names = ", ".join(sorted({type(m).__name__ for m in module.modules()})[:12])
        raise ModelError(
            f"moefy: {type(module).__name__} has no FFN blocks the stage understands (expected BERT-family "
            "layers with `intermediate.dense` and `output.dense`, gated `mlp.gate_proj`, `up_proj` and `down_proj` "
            "(or the fused `mlp.gate_up_proj` of Phi-3, `mlp.Wi` of ModernBERT), "
            f"OPT's `fc1` / `fc2`, GPT-2's `mlp.c_fc` / `mlp.c_proj`, DistilBERT's `ffn.lin1` / `ffn.lin2` or ALBERT's "
            f"`ffn` / `ffn_output`; found "
            f"modules: {names} ...)."
        )
    return blocks


def balanced_kmeans(features: torch.Tensor, groups: int, *, iters: int = 20, seed: int = 0) -> list[torch.Tensor]:
    """Partition the rows of ``features`` [n, d] into ``groups`` clusters of exactly n / groups rows each:
    k-means with a capacity-limited assignment (the closest (row, centroid) pairs first). Returns sorted
    row indices per group."""
    n = features.shape[0]
    if n % groups:
        raise ValueError(f"{n} neurons do not split into {groups} equal experts")
    size = n // groups
    x = torch.nn.functional.normalize(features.float(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=gen)[:groups]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(x, centroids)  # [n, groups]
        order = torch.argsort(dist.flatten())
        taken = torch.zeros(n, dtype=torch.bool)
        load = torch.zeros(groups, dtype=torch.long)
        new = torch.empty(n, dtype=torch.long)
        for flat in order.tolist():
            row, group = divmod(flat, groups)
            if not taken[row] and load[group] < size:
                taken[row], new[row] = True, group
                load[group] += 1
        if torch.equal(new, assign):
            break
        assign = new
        centroids = torch.stack([x[assign == g].mean(0) for g in range(groups)])
    return [torch.nonzero(assign == g).flatten() for g in range(groups)]


class MoeFfn(nn.Module):
    """The FFN as E experts plus a router. ``forward`` returns the FFN output (with ``output.dense``'s bias),
    so it replaces ``intermediate`` while ``output.dense`` becomes Identity; BertOutput's dropout, residual and
    LayerNorm stay as they were.

    Routing: ``top_k`` experts per token (``top_k == experts``: all, computed densely and exactly), or the
    fewest experts whose router probabilities sum to at least ``threshold``."""

    def __init__(self, hidden: int, inner: int, experts: int, act: Callable[[torch.Tensor], torch.Tensor],
                 gated: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.experts, self.expert_size = experts, inner // experts
        self.act = act
        self.gated = gated  # SwiGLU: act(x wg^T) * (x w1^T + b1)
        self.wg = nn.Parameter(torch.zeros(experts, self.expert_size, hidden)) if gated else None
        self.w1 = nn.Parameter(torch.zeros(experts, self.expert_size, hidden))
        self.b1 = nn.Parameter(torch.zeros(experts, self.expert_size))
        self.w2 = nn.Parameter(torch.zeros(experts, hidden, self.expert_size))
        self.b2 = nn.Parameter(torch.zeros(hidden))
        self.router = nn.Linear(hidden, experts)
        self.top_k: int = experts
        self.threshold: float | None = None

    @property
    def ffn_units(self) -> int:
        """FFN units over all experts (what `models.structure` counts for a dense FFN's width)."""
        return self.experts * self.expert_size

    @classmethod
    def from_dense(cls, block: FfnBlock, groups: list[torch.Tensor]) -> MoeFfn:
        gate = block.weight(block.w_gate) if block.w_gate is not None else None
        w_in, w_out = block.weight(block.w_in), block.weight(block.w_out)
        b_in, b_out = getattr(block.w_in, "bias", None), getattr(block.w_out, "bias", None)
        moe = cls(block.hidden_size, block.inner, len(groups), block.act, gated=gate is not None)
        with torch.no_grad():
            for e, idx in enumerate(groups):
                if moe.wg is not None and gate is not None:
                    moe.wg[e].copy_(gate[idx])
                moe.w1[e].copy_(w_in[idx])
                if b_in is not None:  # zeros otherwise, as the MoE was built
                    moe.b1[e].copy_(b_in[idx])
                moe.w2[e].copy_(w_out[:, idx])
            moe.b2.copy_(b_out if b_out is not None else torch.zeros(w_out.shape[0]))
            nn.init.zeros_(moe.router.weight)
            nn.init.zeros_(moe.router.bias)
        return moe

    # ---- routing ---------------------------------------------------------------------------------------------
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.router(x), dim=-1)

    def select(self, probs: torch.Tensor, top_k: int | None = None, threshold: float | None = None) -> torch.Tensor:
        """Boolean mask [tokens, experts] of the experts each token uses."""
        threshold = self.threshold if top_k is None and threshold is None else threshold
        if threshold is not None:
            ranked, order = probs.sort(dim=-1, descending=True)
            keep = ((ranked.cumsum(-1) - ranked) < threshold).to(probs.dtype)  # until the mass reaches it
            return torch.zeros_like(probs).scatter(-1, order, keep) > 0
        k = self.top_k if top_k is None else top_k
        idx = probs.topk(k, dim=-1).indices
        return torch.zeros_like(probs).scatter(-1, idx, torch.ones_like(idx, dtype=probs.dtype)) > 0

    def _act(self, up: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        return self.act(gate) * up if gate is not None else self.act(up)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token: [tokens, experts, hidden] (router training; small batches)."""
        gate = torch.einsum("nh,eih->nei", x, self.wg) if self.wg is not None else None
        h = self._act(torch.einsum("nh,eih->nei", x, self.w1) + self.b1, gate)
        return torch.einsum("nei,ehi->neh", h, self.w2)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        gate = x @ self.wg.reshape(-1, self.wg.shape[-1]).T if self.wg is not None else None
        h = self._act(x @ self.w1.reshape(-1, self.w1.shape[-1]).T + self.b1.reshape(-1), gate)
        return h @ self.w2.permute(1, 0, 2).reshape(self.w2.shape[1], -1).T + self.b2

    @property
    def all_active(self) -> bool:
        return self.threshold is None and self.top_k >= self.experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.all_active:
            return self.dense(x)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        mask = self.select(self.probabilities(flat))
        out = flat.new_zeros(flat.shape) + self.b2
        for e in range(self.experts):  # token grouping: each expert runs on its own tokens only
            idx = torch.nonzero(mask[:, e]).flatten()
            tokens = flat.index_select(0, idx)
            gate = tokens @ self.wg[e].T if self.wg is not None else None
            h = self._act(tokens @ self.w1[e].T + self.b1[e], gate)
            out = out.index_add(0, idx, h @ self.w2[e].T)
        return out.reshape(shape)
