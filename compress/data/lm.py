"""Text for causal language models: documents read from JSONL or plain text, a byte-level BPE tokenizer trained
on the training split, and documents cut into fixed-length blocks that never span two documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from compress.data.config import DataConfig, TokenizerTraining
from compress.errors import DataError
from compress.fileio import read_text

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def read_documents(path: Path, cfg: DataConfig) -> list[str]:
    """The documents of one split: a JSONL file (one per line, key ``cfg.text_key()``), a plain-text file (one
    document) or a folder of text files (one document per file, in path order)."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist. Fix the path (relative to the recipe file).")
    if path.is_dir():
        if cfg.format != "text":
            raise DataError(f"{path} is a folder; data.format {cfg.format} reads one file (use format: text).")
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        docs = [read_text(f, "data file", DataError) for f in files]
    elif cfg.format == "text":
        docs = [read_text(path, "data file", DataError)]
    else:
        key, docs = cfg.text_key(), []
        for i, line in enumerate(read_text(path, "data file", DataError).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{i}: not valid JSON ({exc.msg}).") from None
            if not isinstance(row, dict) or key not in row:
                have = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}:{i}: no {key!r} key (have: {have}); set data.columns.text.")
            if not isinstance(row[key], str):
                raise DataError(f"{path}:{i}: {key!r} is {type(row[key]).__name__}, not a string.")
            docs.append(row[key])
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{path}: no documents (every one is empty); a split needs text.")
    return docs


def tokenizer_corpus(docs: list[str], spec: TokenizerTraining) -> list[str]:
    """The documents the tokenizer trains on: all of them, or the first `max_characters` characters."""
    if not spec.max_characters:
        return docs
    kept, total = [], 0
    for d in docs:
        if total >= spec.max_characters:
            break
        kept.append(d[: spec.max_characters - total])
        total += len(kept[-1])
    return kept


def train_tokenizer(docs: list[str], spec: TokenizerTraining) -> Any:
    """A byte-level BPE tokenizer (the `tokenizers` library, GPT-2 style) trained on ``docs`` (already cut by
    `tokenizer_corpus`), wrapped as a Transformers fast tokenizer so that it saves and loads with the model.
    Seconds for a few MB of text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, min_frequency=spec.min_frequency, special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   unk_token=None, model_max_length=1_000_000)  # fmt: skip


def eos_id(tokenizer: Any) -> int:
    value = tokenizer.eos_token_id
    if value is None:
        raise DataError(f"the tokenizer ({type(tokenizer).__name__}) has no end-of-text token; a causal LM needs one "
                        "between documents.")  # fmt: skip
    return int(value)


def pad_id(tokenizer: Any) -> int:
    value = tokenizer.pad_token_id
    return int(value) if value is not None else eos_id(tokenizer)


def blocks(docs: list[str], tokenizer: Any, length: int) -> list[list[int]]:
    """Each document tokenised, ended with the end-of-text token, and cut into blocks of ``length`` tokens. A
    block never spans two documents (no attention across them); a document's last, shorter block is kept (the
    collate pads it) unless it is a single token, which has no next token to predict."""
    eos = eos_id(tokenizer)
    encoded = tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]  # long documents: expected
    out: list[list[int]] = []
    for ids in encoded:
        ids = [*ids, eos]
        for start in range(0, len(ids), length):
            piece = ids[start : start + length]
            if len(piece) > 1:
                out.append(piece)
    return out


def collate_blocks(blocks_: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Token blocks as a batch: ``input_ids`` and ``attention_mask`` padded on the right, and ``labels``: the next
    token at each position (-100 at the last real position and on padding: nothing to predict there)."""
    width = max(len(b) for b in blocks_)
    ids = torch.full((len(blocks_), width), pad, dtype=torch.long)
    mask = torch.zeros((len(blocks_), width), dtype=torch.long)
    labels = torch.full((len(blocks_), width), -100, dtype=torch.long)
    for row, b in enumerate(blocks_):
        t = torch.tensor(b, dtype=torch.long)
        ids[row, : len(b)] = t
        mask[row, : len(b)] = 1
        labels[row, : len(b) - 1] = t[1:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
