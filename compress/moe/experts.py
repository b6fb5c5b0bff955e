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

import torch
from torch import nn

from compress.errors import ModelError


@dataclass
class FfnBlock:
    """One FFN: a BERT-family one, ``intermediate.dense`` (H -> I) + activation, ``output.dense`` (I -> H); or a
    gated one (LLaMA's SwiGLU, `mlp`): ``act(gate_proj(x)) * up_proj(x)``, then ``down_proj`` (``w_gate`` set,
    ``w_in`` is the up projection)."""

    path: str  # the layer's module path
    layer: nn.Module
    w_in: nn.Linear
    w_out: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    w_gate: nn.Linear | None = None

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN's intermediate activations (what its neurons output)."""
        h = self.w_in(x)
        return self.act(self.w_gate(x)) * h if self.w_gate is not None else self.act(h)


def find_ffn_blocks(module: nn.Module) -> list[FfnBlock]:
    """The FFN blocks of a BERT-family encoder (BERT, RoBERTa, ELECTRA, MiniLM, ...); a clear error naming
    the model otherwise."""
    blocks = []
    for path, sub in module.named_modules():
        mlp = getattr(sub, "mlp", None)
        gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
        if all(isinstance(w, nn.Linear) for w in (gate, up, down)) and callable(getattr(mlp, "act_fn", None)):
            blocks.append(FfnBlock(path, sub, up, down, mlp.act_fn, gate))  # type: ignore[arg-type,union-attr]
            continue
        inter, out = getattr(sub, "intermediate", None), getattr(sub, "output", None)
        dense_in, dense_out = getattr(inter, "dense", None), getattr(out, "dense", None)
        if isinstance(dense_in, nn.Linear) and isinstance(dense_out, nn.Linear | nn.Identity):
            act = getattr(inter, "intermediate_act_fn", None)
            if act is None:
                raise ModelError(f"moefy: {path}.intermediate has no `intermediate_act_fn`; cannot split its FFN.")
            if isinstance(dense_out, nn.Linear):
                blocks.append(FfnBlock(path, sub, dense_in, dense_out, act))
    if not blocks:
        names = ", ".join(sorted({type(m).__name__ for m in module.modules()})[:12])
        raise ModelError(
            f"moefy: {type(module).__name__} has no FFN blocks the stage understands (expected BERT-family "
            f"layers with `intermediate.dense` and `output.dense` Linear modules, or gated `mlp.gate_proj`, `up_proj` "
            f"and `down_proj` ones; found modules: {names} ...)."
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
        w_in, w_out = block.w_in, block.w_out
        moe = cls(w_in.in_features, w_in.out_features, len(groups), block.act, gated=block.w_gate is not None)
        with torch.no_grad():
            for e, idx in enumerate(groups):
                if moe.wg is not None and block.w_gate is not None:
                    moe.wg[e].copy_(block.w_gate.weight[idx])
                moe.w1[e].copy_(w_in.weight[idx])
                moe.b1[e].copy_(w_in.bias[idx] if w_in.bias is not None else 0)
                moe.w2[e].copy_(w_out.weight[:, idx])
            moe.b2.copy_(w_out.bias if w_out.bias is not None else torch.zeros(w_out.out_features))
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
