"""Train / dev / test splits as torch datasets, with dynamic padding for text."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from compress.data import images, lm, text
from compress.data.config import DataConfig
from compress.errors import DataError
from compress.fileio import sha256_file

Batch = dict[str, torch.Tensor]
LOGITS_BUDGET = 512 * 2**20  # bytes of float32 next-token logits per evaluation batch of a causal LM


class Split(Dataset):
    """One split. Text: token id lists; images: a tensor. Every item knows its index (teacher-output cache)."""

    def __init__(
        self,
        name: str,
        features: Sequence[Any] | torch.Tensor,
        labels: torch.Tensor,
        pad_id: int = 0,
        texts: list[str] | None = None,
        pairs: list[str] | None = None,
    ):
        self.name, self.features, self.labels, self.pad_id = name, features, labels, pad_id
        self.is_text = not isinstance(features, torch.Tensor)
        self.texts, self.pairs = texts, pairs  # text data: the raw texts the ids came from (augmentation reads them)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> Batch:
        idx = torch.tensor(indices, dtype=torch.long)
        batch: Batch = {"labels": self.labels[idx], "index": idx}
        if self.is_text:
            seqs = [self.features[i] for i in indices]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[row, : len(s)] = 1
            batch["input_ids"], batch["attention_mask"] = ids, mask
        else:
            assert isinstance(self.features, torch.Tensor)
            batch["pixel_values"] = self.features[idx]
        return batch

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(self, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=gen)

    def subset(self, n: int) -> Split:
        return self.slice(0, min(n, len(self)))

    def slice(self, lo: int, hi: int) -> Split:
        """Examples ``lo`` to ``hi`` (a process's shard)."""
        return self.take(range(lo, min(hi, len(self))))

    def long_examples(self, min_tokens: int, n: int) -> Split:
        """The first ``n`` examples of at least ``min_tokens`` tokens (token sequences of a labelled split; any
        example otherwise)."""
        if not min_tokens or not self.is_text or self.task != "classification":
            return self.subset(n)
        return self.take([i for i, f in enumerate(self.features) if len(f) >= min_tokens][:n])

    def take(self, indices: Sequence[int], name: str | None = None) -> Split:
        """The examples at ``indices``, in that order, with their raw texts (named ``name``, default this name)."""
        picked = list(indices)
        idx = torch.tensor(picked, dtype=torch.long)
        features = self.features[idx] if isinstance(self.features, torch.Tensor) else [self.features[i] for i in picked]
        texts = [self.texts[i] for i in picked] if self.texts is not None else None
        pairs = [self.pairs[i] for i in picked] if self.pairs is not None else None
        return Split(name or self.name, features, self.labels[idx], self.pad_id, texts, pairs)

    def lengths(self) -> list[int] | None:
        """Each example's token count (text), or None where every example has the same size (images)."""
        return [len(f) for f in self.features] if self.is_text else None

    def logits_batch(self, batch_size: int, vocab: int) -> int:
        """The batch an evaluation takes: ``batch_size`` (a classifier's logits are small; see `LmSplit`)."""
        return batch_size

    @property
    def task(self) -> str:
        return "classification"


class LmSplit(Split):
    """One split of a causal-LM corpus: token blocks (see `data/lm.py`); a batch's ``labels`` are the next tokens."""

    def __init__(self, name: str, blocks: Sequence[Any], pad_id: int):
        super().__init__(name, blocks, torch.zeros(len(blocks), dtype=torch.long), pad_id)
        self.blocks: list[list[int]] = list(blocks)

    def collate(self, indices: list[int]) -> Batch:
        batch = lm.collate_blocks([self.blocks[i] for i in indices], self.pad_id)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch

    def take(self, indices: Sequence[int], name: str | None = None) -> Split:
        return LmSplit(name or self.name, [self.blocks[i] for i in indices], self.pad_id)

    def tokens(self) -> int:
        """Tokens predicted in this split (each block's positions but its last)."""
        return sum(len(b) - 1 for b in self.blocks)

    def logits_batch(self, batch_size: int, vocab: int) -> int:
        """``batch_size``, or fewer blocks where a batch's full next-token logits would pass `LOGITS_BUDGET`: an
        evaluation (or the teacher's cache) at a classifier's batch size would hold, for SmolLM2 (49,152 tokens) at
        128 blocks of 256, three 6.4 GB copies of the logits at once."""
        longest = max((len(b) for b in self.blocks), default=1)
        return max(1, min(batch_size, LOGITS_BUDGET // (4 * longest * max(vocab, 1))))

    @property
    def task(self) -> str:
        return "causal_lm"


@dataclass
class DataBundle:
    train: Split
    dev: Split
    test: Split
    num_labels: int
    modality: Literal["text", "image", "lm"]
    in_channels: int | None = None
    label_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    max_length: int = 0  # the longest token sequence (`data.max_length`; 0 for images): the deploy shape of text

    def describe(self) -> str:
        sizes = f"{len(self.train)} / {len(self.dev)} / {len(self.test)}"
        if self.modality == "lm":
            return (f"{sizes} blocks of up to {self.max_length} tokens (train / dev / test), vocabulary "
                    f"{self.num_labels}")
        return f"{sizes} examples (train / dev / test), {self.num_labels} labels"


def fingerprint(cfg: DataConfig, base_dir: Path) -> str:
    """Hash of the data config and the content of every file it names (cache key input)."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode())
    for key in ("train", "dev", "test"):
        value = getattr(cfg, key)
        if value:
            path = base_dir / value
            if path.is_file():
                h.update(sha256_file(path).encode())
            elif path.is_dir():
                for f in sorted(path.rglob("*")):
                    if f.is_file():
                        h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
    return h.hexdigest()


def _holdout(n: int, cfg: DataConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_dev, n_test = int(n * cfg.split.dev), int(n * cfg.split.test)
    return perm[n_dev + n_test :], perm[:n_dev], perm[n_dev : n_dev + n_test]


def _limit(bundle: DataBundle, cfg: DataConfig) -> DataBundle:
    if cfg.max_train_samples:
        bundle.train = bundle.train.subset(cfg.max_train_samples)
    if cfg.max_eval_samples:
        bundle.dev = bundle.dev.subset(cfg.max_eval_samples)
        bundle.test = bundle.test.subset(cfg.max_eval_samples)
    return bundle


def load_data(cfg: DataConfig, base_dir: Path, tokenizer: Any = None, seed: int = 0) -> DataBundle:
    """Load and prepare all three splits described by the recipe's `data` section."""
    fp = fingerprint(cfg, base_dir)
    if cfg.format == "sklearn_digits":
        x, y = images.load_digits_arrays()
        tr, dv, te = _holdout(len(y), cfg, seed)
        splits = [Split(n, x[i], y[i]) for n, i in (("train", tr), ("dev", dv), ("test", te))]
        bundle = DataBundle(
            splits[0], splits[1], splits[2], num_labels=10, modality="image", in_channels=1, fingerprint=fp,
            label_names=[str(i) for i in range(10)],
        )
    elif cfg.format == "image_folder":
        bundle = _image_folder(cfg, base_dir, seed, fp)
    elif cfg.modality == "lm":
        bundle = _lm(cfg, base_dir, tokenizer, seed, fp)
    else:
        bundle = _text(cfg, base_dir, tokenizer, seed, fp)
    if bundle.modality != "image":
        bundle.max_length = cfg.max_length
    return _limit(bundle, cfg)


def label_info(cfg: DataConfig, base_dir: Path, load: Callable[[], DataBundle]) -> tuple[int, int | None]:
    """Labels and image channels, before the teacher is built: images are loaded (``load``); text needs a
    tokenizer, so only its label columns are read (the teacher brings the tokenizer). Causal-LM data has no labels
    (0): the vocabulary comes with the tokenizer."""
    if cfg.modality == "lm":
        return 0, None
    if cfg.modality == "image":
        d = load()
        return d.num_labels, d.in_channels
    labels = {}
    for key in ("train", "dev", "test"):
        value = getattr(cfg, key)
        if value:
            path = base_dir / value
            labels[key] = (path, text.extract(text.read_rows(path, cfg.format), cfg, path)[2])
    mapping = text.label_mapping(labels, cfg.columns.label)
    return max(mapping.values()) + 1, None


def _image_folder(cfg: DataConfig, base_dir: Path, seed: int, fp: str) -> DataBundle:
    assert cfg.train is not None
    x, y, classes = images.load_image_folder(base_dir / cfg.train, cfg, None)
    if cfg.dev and cfg.test:
        xd, yd, _ = images.load_image_folder(base_dir / cfg.dev, cfg, classes)
        xt, yt, _ = images.load_image_folder(base_dir / cfg.test, cfg, classes)
        splits = [Split("train", x, y), Split("dev", xd, yd), Split("test", xt, yt)]
    else:
        tr, dv, te = _holdout(len(y), cfg, seed)
        splits = [Split(n, x[i], y[i]) for n, i in (("train", tr), ("dev", dv), ("test", te))]
    return DataBundle(
        splits[0],
        splits[1],
        splits[2],
        num_labels=len(classes),
        modality="image",
        in_channels=x.shape[1],
        label_names=classes,
        fingerprint=fp,
    )


def _text(cfg: DataConfig, base_dir: Path, tokenizer: Any, seed: int, fp: str) -> DataBundle:
    if tokenizer is None:
        raise DataError("text data needs the teacher's tokenizer; the teacher has none (use an `hf` teacher).")
    raw: dict[str, tuple[list[str], list[str] | None, list[Any]]] = {}
    paths: dict[str, Path] = {}
    for key in ("train", "dev", "test"):
        value = getattr(cfg, key)
        if value:
            path = paths[key] = base_dir / value
            rows = text.read_rows(path, cfg.format)
            if key == "train" and cfg.max_train_samples and cfg.dev and cfg.test:
                rows = rows[: cfg.max_train_samples]  # don't tokenise what will be dropped
            raw[key] = text.extract(rows, cfg, path)
    mapping = text.label_mapping({k: (paths[k], r[2]) for k, r in raw.items()}, cfg.columns.label)
    num_labels = max(mapping.values()) + 1
    pad_id = tokenizer.pad_token_id or 0

    def make(name: str, texts: list[str], pairs: list[str] | None, labels: list[Any]) -> Split:
        ids = text.tokenize(tokenizer, texts, pairs, cfg.max_length)
        y = torch.tensor([mapping[str(v).strip()] for v in labels], dtype=torch.long)
        return Split(name, ids, y, pad_id, texts, pairs)

    if "dev" in raw and "test" in raw:
        splits = [make(k, *raw[k]) for k in ("train", "dev", "test")]
    else:
        full = make("train", *raw["train"])
        tr, dv, te = _holdout(len(full), cfg, seed)
        held = {"dev": raw.get("dev"), "test": raw.get("test")}
        parts = {"train": tr, "dev": dv, "test": te}
        splits = []
        for name, idx in parts.items():
            given = held.get(name)
            if given is not None:
                splits.append(make(name, *given))
            else:
                splits.append(full.take(idx.tolist(), name))
    names = sorted(mapping, key=mapping.__getitem__)
    return DataBundle(
        splits[0], splits[1], splits[2], num_labels=num_labels, modality="text", label_names=names, fingerprint=fp
    )


def lm_documents(cfg: DataConfig, base_dir: Path, seed: int) -> dict[str, list[str]]:
    """The documents of each split; without `dev` / `test` files, whole documents are held out by fraction."""
    assert cfg.train is not None
    docs = {k: lm.read_documents(base_dir / v, cfg) for k in ("train", "dev", "test") if (v := getattr(cfg, k))}
    if "dev" not in docs or "test" not in docs:
        full = docs["train"]
        tr, dv, te = _holdout(len(full), cfg, seed)
        parts = {"train": tr, "dev": dv, "test": te}
        for name, idx in parts.items():
            if name == "train" or name not in docs:
                docs[name] = [full[i] for i in idx.tolist()]
        for name in ("dev", "test"):
            if not docs[name]:
                raise DataError(f"data.split.{name}: {len(full)} documents in {cfg.train} leave none for the {name} "
                                f"split; give data.{name} or more documents.")  # fmt: skip
    return docs


def _lm(cfg: DataConfig, base_dir: Path, tokenizer: Any, seed: int, fp: str) -> DataBundle:
    if tokenizer is None:
        raise DataError("causal-LM data needs a tokenizer: the teacher's, or one trained by data.tokenizer.")
    docs = lm_documents(cfg, base_dir, seed)
    pad = lm.pad_id(tokenizer)
    splits = [LmSplit(k, lm.blocks(docs[k], tokenizer, cfg.max_length), pad) for k in ("train", "dev", "test")]
    for split in splits:
        if len(split) == 0:
            raise DataError(f"data.{split.name}: the {split.name} split has no block of two or more tokens.")
    vocab = len(tokenizer)
    return DataBundle(splits[0], splits[1], splits[2], num_labels=vocab, modality="lm", fingerprint=fp)
