"""The teacher's outputs on the training split, computed once and cached on disk for every stage that distils
from the same teacher on the same data (`distill`, `search`'s rerank): a classifier's logits, and a causal-LM
teacher's next-token distributions as their top-k log-probabilities per token.

Full next-token logits do not fit on disk (3M tokens x a 32K vocabulary x 2 bytes is 190 GB); the top k of each
position do (k = 32: 6 bytes each, about 0.6 GB for 3M tokens). Following "Pre-training Distillation for Large
Language Models: A Design Space Exploration" (truncated teacher logits lose little), a cached distribution keeps
its top-k probabilities exactly and spreads the mass left over evenly across the other tokens, so every sequence
loss reads it as a full distribution (the reconstruction's log-probabilities are valid logits). With k equal to
the vocabulary it is the teacher's distribution itself.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from compress.data.dataset import DataBundle, Split
from compress.fileio import default_mode, sha256_json
from compress.models.task_model import TaskModel
from compress.training.engine import Engine
from compress.training.evaluate import predict_logits
from compress.ui import progress

log = logging.getLogger("compress")


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
    loader = part.loader(part.logits_batch(batch_size, model.num_labels))
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


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")  # unique: a second process never shares it
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    default_mode(tmp)
    tmp.replace(path)  # atomic: a reader finds the whole file or none


def cached_teacher_logits(
    teacher: TaskModel,
    teacher_sha256: str,
    data: DataBundle,
    cache_dir: Path,
    engine: Engine,
    *,
    batch_size: int,
    split: Split | None = None,
    variant: object = None,
) -> torch.Tensor:
    """The classifier teacher's logits on every training example, keyed by the teacher artifact's hash and the
    data's fingerprint (computed shard-wise under several processes, written by the main one). ``split``: another
    training split made from the data (an augmented one), named in the key by ``variant`` (what made it)."""
    split = data.train if split is None else split
    key = sha256_json([teacher_sha256, data.fingerprint, len(split), "train-logits",
                       *([variant] if variant is not None else [])])[:24]  # fmt: skip
    path = cache_dir / "teacher-logits" / f"{key}.safetensors"
    if engine.broadcast_object(path.is_file()):  # every process takes the same branch
        log.info("teacher logits: cache hit %s", path.name)
        return load_file(str(path))["logits"]
    teacher.module.to(engine.device)
    with engine.autocast(engine.teacher_precision):  # each process its shard, gathered by all
        logits = predict_logits(teacher, split, batch_size, "teacher logits (cached once)", engine)
    if engine.is_main:
        _save({"logits": logits}, path)
    return logits


def cached_teacher_top_k(
    teacher: TaskModel,
    teacher_sha256: str,
    data: DataBundle,
    cache_dir: Path,
    engine: Engine,
    *,
    k: int,
    batch_size: int,
) -> TopKCache:
    """The causal-LM teacher's top-k log-probabilities on the training split, computed shard-wise once and cached."""
    key = sha256_json([teacher_sha256, data.fingerprint, len(data.train), k, "train-top-k"])[:24]
    path = cache_dir / "teacher-top-k" / f"{key}.safetensors"
    if engine.broadcast_object(path.is_file()):
        log.info("teacher top-%d: cache hit %s", k, path.name)
        saved = load_file(str(path))
        return TopKCache(saved["ids"], saved["logprobs"], int(saved["vocab"]))
    teacher.module.to(engine.device)
    with engine.autocast(engine.teacher_precision):
        cache = top_k_logprobs(teacher, data.train, k, batch_size, engine, f"teacher top-{k} (cached once)")
    if engine.is_main:
        _save({"ids": cache.ids, "logprobs": cache.logprobs, "vocab": torch.tensor(cache.vocab)}, path)
    return cache


def cached_teacher_outputs(
    teacher: TaskModel, teacher_sha256: str, data: DataBundle, cache_dir: Path, engine: Engine, *, top_k: int | None,
    batch_size: int,
) -> tuple[torch.Tensor | TopKCache | None, dict]:  # fmt: skip
    """What the data's task caches of the teacher on the training split: a classifier's logits, or a causal LM's
    top ``top_k`` log-probabilities per token (at most the vocabulary; None: none, the teacher runs every step);
    and what the report says of it."""
    if data.train.task != "causal_lm":
        return cached_teacher_logits(teacher, teacher_sha256, data, cache_dir, engine, batch_size=batch_size), {}
    if top_k is None:
        return None, {}
    if top_k > data.num_labels:
        from compress.errors import StageError

        raise StageError(f"distill.teacher_top_k: {top_k} is more than the teacher's vocabulary ({data.num_labels} "
                         f"tokens); give at most {data.num_labels}.")  # fmt: skip
    cached = cached_teacher_top_k(teacher, teacher_sha256, data, cache_dir, engine, k=top_k, batch_size=batch_size)
    lengths = [len(b) for b in data.train.features]
    info = {"top_k": cached.k, "vocabulary": cached.vocab, "mass_kept": cached.mass_kept(lengths)}
    log.info("teacher cache: top %d of %d tokens per position keep %.2f%% of the probability mass", cached.k,
             cached.vocab, 100 * info["mass_kept"])  # fmt: skip
    return cached, info
