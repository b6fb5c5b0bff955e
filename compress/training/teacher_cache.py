"""A causal-LM teacher's next-token distributions cached as their top-k log-probabilities per token.

Full next-token logits do not fit on disk (3M tokens x a 32K vocabulary x 2 bytes is 190 GB); the top k of each
position do (k = 32: 6 bytes each, about 0.6 GB for 3M tokens). Following "Pre-training Distillation for Large
Language Models: A Design Space Exploration" (truncated teacher logits lose little), a cached distribution keeps
its top-k probabilities exactly and spreads the mass left over evenly across the other tokens, so every sequence
loss reads it as a full distribution (the reconstruction's log-probabilities are valid logits). With k equal to
the vocabulary it is the teacher's distribution itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compress.data.dataset import Split
from compress.models.task_model import TaskModel
from compress.training.engine import Engine
from compress.ui import progress


@dataclass
class TopKCache:
    """Per training block and position: the teacher's top-k token ids and their log-probabilities (padded to the
    block length; padding positions hold id 0 and log-probability 0, and are never read by a loss)."""

    ids: torch.Tensor  # (blocks, length, k) int32
    logprobs: torch.Tensor  # (blocks, length, k) float16
    vocab: int

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    def mass_kept(self, lengths: list[int]) -> float:
        """The mean over real positions of the probability mass the top k keep."""
        kept = self.logprobs.float().exp().sum(-1)  # (blocks, length)
        mask = torch.arange(kept.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        return float(kept[mask].mean()) if mask.any() else 1.0

    def dense(self, index: torch.Tensor, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Full log-probabilities ``(len(index), width, vocab)`` for the blocks ``index``: the top k as cached, the
        rest of the mass spread evenly over the other tokens."""
        ids = self.ids[index, :width].to(device).long()
        lp = self.logprobs[index, :width].to(device).float()
        kept = lp.exp().sum(-1, keepdim=True).clamp(max=1.0)
        others = self.vocab - self.k
        if others > 0:
            rest = torch.log((1.0 - kept).clamp_min(1e-12) / others)
            out = rest.expand(*lp.shape[:2], self.vocab).clone()
        else:
            out = torch.full((*lp.shape[:2], self.vocab), -math.inf, device=lp.device)
        return out.scatter_(-1, ids, lp)


@torch.no_grad()
def top_k_logprobs(
    model: TaskModel, split: Split, k: int, batch_size: int, engine: Engine | None = None, label: str = ""
) -> TopKCache:
    """The teacher's top-k next-token log-probabilities at every position of every block of ``split``; under
    several processes each computes a contiguous shard and all gather the whole."""
    model.module.eval()
    part = split.slice(*engine.shard(len(split))) if engine is not None and engine.distributed else split
    length = max((len(b) for b in split.features), default=1)
    ids_out, lp_out = [], []
    loader = part.loader(batch_size)
    with progress(label or f"teacher top-{k} on {split.name}", len(loader)) as bar:
        for batch in loader:
            if engine is not None:
                batch = engine.to_device(batch)
            logp = F.log_softmax(model.logits(batch).float(), dim=-1)
            values, ids = logp.topk(k, dim=-1)
            values = values.masked_fill(batch["attention_mask"][..., None] == 0, 0.0)
            ids = ids.masked_fill(batch["attention_mask"][..., None] == 0, 0)
            pad = length - ids.shape[1]
            ids_out.append(F.pad(ids, (0, 0, 0, pad)).to(torch.int32).cpu())
            lp_out.append(F.pad(values, (0, 0, 0, pad)).to(torch.float16).cpu())
            bar.advance()
    ids_all = torch.cat(ids_out) if ids_out else torch.zeros((0, length, k), dtype=torch.int32)
    lp_all = torch.cat(lp_out) if lp_out else torch.zeros((0, length, k), dtype=torch.float16)
    if engine is not None and engine.distributed:
        ids_all = engine.gather(ids_all.float()).to(torch.int32)  # ids < 2^24: exact in float32
        lp_all = engine.gather(lp_all.float()).to(torch.float16)
    return TopKCache(ids_all, lp_all, model.num_labels)
