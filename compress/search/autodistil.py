"""AutoDistil: task-agnostic super-network training (sandwich rule) and held-out scoring of sub-networks.

Xu et al., 2022, "AutoDistil: Few-shot Task-agnostic Neural Architecture Search for Distilling Large Language
Models". Each of the K sub-spaces gets its own super-network. A training step samples the largest, the smallest
and ``random_subnets`` random sub-networks of the sub-space (the sandwich rule) and accumulates, for each, the
MiniLMv2 self-attention relation loss (KL between teacher and student Q-Q, K-K, V-V relations of the last
layer; causal relations for decoders; no labels are used). After training, sub-networks are scored, without
retraining, by the same loss on held-out batches: ``score = -loss``.

Differences from the paper, forced by the setting: the super-network starts from the (rewired) teacher rather
than from scratch, and the unlabelled text is the task's own training split with its labels ignored (no
general-domain corpus is downloaded). Both are standard in the weight-sharing literature (DynaBERT).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from compress.data.dataset import Batch, Split
from compress.losses.functional import minilm_relation_loss
from compress.losses.taps import FeatureTaps
from compress.models.structure import head_size
from compress.models.task_model import TaskModel
from compress.search.space import Arch, TransformerSpace
from compress.search.supernet import SlicedSuperNet
from compress.training.loop import adamw
from compress.ui import progress

log = logging.getLogger("compress")


def relation_heads(space: TransformerSpace, teacher: TaskModel) -> int:
    """The most relation heads (at most the teacher's heads) that divide every Q/K/V width involved (key/value
    widths are smaller under grouped-query attention)."""
    cfg: Any = teacher.module.config
    d = int(getattr(cfg, "head_dim", None) or head_size(cfg))
    heads = cfg.num_attention_heads
    g = heads // (getattr(cfg, "num_key_value_heads", None) or heads)
    widths = [h * d for h in [*space.choices()["heads"], heads]]
    widths += [w // g for w in widths]
    return max(r for r in range(1, heads + 1) if all(w % r == 0 for w in widths))


def _teacher_qkv(teacher: TaskModel, batch: Batch, paths: list[str]) -> list[torch.Tensor]:
    with torch.no_grad(), FeatureTaps(teacher.module, paths) as feats:
        teacher.logits(batch)
    return [feats[p] for p in paths]


def subnet_loss(net: SlicedSuperNet, arch: Arch, batch: Batch, t_qkv: list[torch.Tensor], heads: int) -> torch.Tensor:
    paths = net.qkv_paths(arch)
    with FeatureTaps(net.skeleton(arch), paths) as feats:
        net.forward_sub(arch, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    s_qkv = [feats[p] for p in paths]
    return minilm_relation_loss(s_qkv, t_qkv, relation_heads=heads, mask=batch["attention_mask"], causal=net.causal)


@dataclass
class SupernetTraining:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_supernet(
    net: SlicedSuperNet,
    teacher: TaskModel,
    space: TransformerSpace,
    train: Split,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    random_subnets: int,
    heads: int,
    seed: int,
    label: str,
) -> SupernetTraining:
    """Sandwich-rule training of ``net`` on unlabelled text (the labels of ``train`` are never read)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = adamw(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    teacher.module.eval()
    net.train()
    history: list[dict[str, float]] = []
    start, step, window = time.perf_counter(), 0, []
    with progress(f"{label}: super-network", steps) as bar:
        while step < steps:
            for batch in train.loader(batch_size, shuffle=True, seed=seed + step):
                t_qkv = _teacher_qkv(teacher, batch, net.teacher_qkv_paths())
                archs = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(random_subnets)]
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for arch in archs:
                    loss = subnet_loss(net, arch, batch, t_qkv, heads) / len(archs)
                    loss.backward()
                    total += float(loss.detach())
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                step += 1
                window.append(total)
                if step % 25 == 0 or step == steps:
                    history.append({"step": step, "loss": sum(window) / len(window)})
                    bar.describe(f"loss {history[-1]['loss']:.4f}")
                    window = []
                bar.advance()
                if step >= steps:
                    break
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d sandwich steps (%d sub-networks each) in %.0f s; relation loss %.4f -> %.4f",
        label, steps, len(archs), seconds, history[0]["loss"], history[-1]["loss"],
    )  # fmt: skip
    net.eval()
    return SupernetTraining(steps, seconds, history)


class HeldOut:
    """A few held-out batches with the teacher's relations cached, to score sub-networks by their loss."""

    def __init__(
        self, teacher: TaskModel, split: Split, batches: int, batch_size: int, heads: int, paths: list[str]
    ) -> None:
        self.batches = [b for _, b in zip(range(batches), split.loader(batch_size), strict=False)]
        self.targets = [_teacher_qkv(teacher, b, paths) for b in self.batches]
        self.heads = heads

    @torch.no_grad()
    def loss(self, net: SlicedSuperNet, arch: Arch) -> float:
        net.eval()
        losses = [subnet_loss(net, arch, b, t, self.heads) for b, t in zip(self.batches, self.targets, strict=True)]
        value = float(torch.stack(losses).mean())
        return value if math.isfinite(value) else math.inf
