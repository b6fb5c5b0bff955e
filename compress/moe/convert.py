"""LaDiMo stage 1 on a model: capture each FFN's inputs and outputs on calibration tokens, split its neurons
into experts, put the MoE block in place, and train each layer's router by layer-wise distillation."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from compress.models.transforms import register_transform
from compress.moe.experts import SLOTS, FfnBlock, MoeFfn, balanced_kmeans, find_ffn_blocks

log = logging.getLogger("compress")
TRANSFORM = "moe"  # the model transform that rebuilds the MoE layers on load (args: `spec`)


def is_moe(module: nn.Module) -> bool:
    """Whether a model holds MoE layers made by `moefy`."""
    return any(isinstance(m, MoeFfn) for m in module.modules())

Clustering = Literal["weights", "coactivation"]


@dataclass
class Calibration:
    """Per FFN block: its inputs [tokens, H] and dense outputs [tokens, H] on non-padding tokens."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]

    @property
    def tokens(self) -> int:
        return int(self.inputs[0].shape[0])


@torch.no_grad()
def capture(module: nn.Module, blocks: list[FfnBlock], batches: Iterable[dict[str, torch.Tensor]],
            max_tokens: int) -> Calibration:  # fmt: skip
    ins: list[list[torch.Tensor]] = [[] for _ in blocks]
    outs: list[list[torch.Tensor]] = [[] for _ in blocks]
    keep: list[list[torch.Tensor]] = [[] for _ in blocks]  # per block: the token mask of each call
    hooks = []
    for i, b in enumerate(blocks):
        hooks.append(b.input_module.register_forward_pre_hook(lambda _m, a, i=i: ins[i].append(a[0].detach())))
        hooks.append(b.w_out.register_forward_hook(lambda _m, _a, o, i=i: outs[i].append(o.detach())))
    seen = 0
    module.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"].bool()
            before = [len(x) for x in ins]
            module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            for i, n in enumerate(before):  # a shared layer (ALBERT's) runs, and is captured, several times
                keep[i] += [mask.flatten()] * (len(ins[i]) - n)
            seen += int(mask.sum())
            if seen >= max_tokens:
                break
    finally:
        for h in hooks:
            h.remove()
    def flat(parts: list[torch.Tensor], sel: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([p.reshape(-1, p.shape[-1]) for p in parts])[torch.cat(sel)]
        return x[:max_tokens]

    return Calibration([flat(p, k) for p, k in zip(ins, keep, strict=True)],
                       [flat(p, k) for p, k in zip(outs, keep, strict=True)])  # fmt: skip


def neuron_groups(
    block: FfnBlock, x: torch.Tensor, experts: int, clustering: Clustering, seed: int
) -> list[torch.Tensor]:
    if clustering == "weights":
        features = block.weight(block.w_in).detach()  # each neuron's input weights
    else:  # co-activation: each neuron's activations over (a sample of) the calibration tokens
        sample = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:2048]]
        features = block.hidden(sample).T.detach()
    return balanced_kmeans(features, experts, seed=seed)


def install(block: FfnBlock, moe: MoeFfn) -> None:
    """Put ``moe`` in the block's slot (a gated `mlp` as a whole; a BERT-family `intermediate`, OPT's `fc1`, GPT-2's
    `mlp.c_fc`) and make the modules after it Identity (the output projection, the activation where the layer
    applies it apart): the layer's residual, dropout and LayerNorm stay as they were."""
    for dotted, value in ((block.slot, moe), *((name, nn.Identity()) for name in block.cleared)):
        parent, _, name = dotted.rpartition(".")
        setattr(block.layer.get_submodule(parent) if parent else block.layer, name, value)


@dataclass
class RouterTraining:
    first_loss: list[float] = field(default_factory=list)
    last_loss: list[float] = field(default_factory=list)


def train_router(moe: MoeFfn, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float, batch_tokens: int,
                 seed: int) -> tuple[float, float]:  # fmt: skip
    """Layer-wise distillation of the router: the MoE output with the router's top-k experts must match the
    dense FFN output (MSE). k is drawn from 1..E-1 every step, so one router ranks experts well for every
    policy chosen later; the hard top-k mask passes gradients to the router probabilities straight through.
    Experts stay frozen (they are the dense FFN). Returns the MSE at k = E/2 on a fixed batch, before and
    after training (the training loss itself jumps with the k drawn)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(moe.router.parameters(), lr=lr)
    probe = torch.randint(0, x.shape[0], (min(batch_tokens, x.shape[0]),), generator=gen)

    @torch.no_grad()
    def probe_loss() -> float:
        mask = moe.select(moe.probabilities(x[probe]), top_k=max(1, moe.experts // 2)).to(x.dtype)
        pred = (mask.unsqueeze(-1) * moe.expert_outputs(x[probe])).sum(1) + moe.b2
        return float(torch.nn.functional.mse_loss(pred, y[probe]))

    first = probe_loss()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch_tokens, x.shape[0]),), generator=gen)
        xb, yb = x[idx], y[idx]
        with torch.no_grad():
            outs = moe.expert_outputs(xb)
        probs = moe.probabilities(xb)
        k = int(torch.randint(1, moe.experts, (1,), generator=gen))
        hard = moe.select(probs.detach(), top_k=k).to(probs.dtype)
        gate = hard + probs - probs.detach()
        loss = torch.nn.functional.mse_loss((gate.unsqueeze(-1) * outs).sum(1) + moe.b2, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, probe_loss()


def spec(moes: list[tuple[str, MoeFfn]]) -> dict[str, Any]:
    """What `rebuild` needs: expert count and each layer's policy."""
    return {
        "experts": moes[0][1].experts,
        "layers": [{"path": p, "top_k": m.top_k, "threshold": m.threshold} for p, m in moes],
    }


@register_transform(TRANSFORM)
def rebuild(module: nn.Module, moe_spec: dict[str, Any]) -> None:
    """Turn a freshly built dense model into the saved MoE skeleton (weights are loaded afterwards)."""
    by_path = {b.path: b for b in find_ffn_blocks(module)}
    for layer in moe_spec["layers"]:
        block = by_path[layer["path"]]
        moe = MoeFfn(block.hidden_size, block.inner, moe_spec["experts"], block.act, gated=block.w_gate is not None)
        moe.top_k, moe.threshold = layer["top_k"], layer["threshold"]
        install(block, moe)


def moe_layers(module: nn.Module) -> list[tuple[str, MoeFfn]]:
    """(the layer's path, its MoE) for every MoE layer: the MoE's path less the slot it sits in."""
    found = []
    for path, sub in module.named_modules():
        if isinstance(sub, MoeFfn):
            slot = next(s for s in sorted(SLOTS, key=len, reverse=True) if path.endswith(f".{s}"))
            found.append((path[: -len(slot) - 1], sub))
    return found
