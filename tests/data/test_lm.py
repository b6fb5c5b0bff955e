"""Causal-LM data: documents from JSONL and plain text, the BPE tokenizer trained on a slice, blocks that never
span two documents, next-token labels, and clear errors for bad corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.data import lm
from compress.data.config import DataConfig, TokenizerTraining
from compress.data.dataset import LmSplit, load_data
from compress.errors import DataError


@pytest.fixture(scope="module")
def tokenizer(pycode_slice: Path):  # noqa: ANN201
    docs = lm.read_documents(pycode_slice / "train.jsonl", _cfg(pycode_slice))
    return lm.train_tokenizer(docs, TokenizerTraining(vocab_size=400))


def _cfg(folder: Path, **kw: object) -> DataConfig:
    base = {"format": "jsonl", "train": str(folder / "train.jsonl"), "dev": str(folder / "dev.jsonl"),
            "test": str(folder / "test.jsonl"), "max_length": 32}  # fmt: skip
    cfg = DataConfig.model_validate({**base, **kw})
    cfg._task = "causal_lm"
    return cfg


def test_the_trained_tokenizer_round_trips_python_source_and_saves(tokenizer, pycode_slice: Path, tmp_path: Path):  # noqa: ANN001
    from transformers import AutoTokenizer

    text = json.loads((pycode_slice / "test.jsonl").read_text().splitlines()[0])["text"][:500]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: every character survives
    assert len(tokenizer) <= 400 and len(ids) < len(text) / 1.5  # merges learned: fewer tokens than characters
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.eos_token_id == tokenizer.eos_token_id and again.pad_token_id != again.eos_token_id


def test_blocks_never_span_two_documents(tokenizer) -> None:  # noqa: ANN001
    docs = ["def f(x):\n    return x + 1\n" * 3, "import os\nprint(os.getcwd())\n"]
    blocks = lm.blocks(docs, tokenizer, 8)
    eos = tokenizer.eos_token_id
    ends = [i for i, b in enumerate(blocks) if b[-1] == eos]
    assert len(ends) == 2  # each document ends with its own end-of-text token, at the end of a block
    first = [t for b in blocks[: ends[0] + 1] for t in b]
    assert tokenizer.decode(first[:-1]) == docs[0]
    assert all(len(b) <= 8 for b in blocks) and all(len(b) > 1 for b in blocks)


def test_a_batch_predicts_the_next_token_and_ignores_padding() -> None:
    batch = lm.collate_blocks([[5, 6, 7, 8], [9, 10]], pad=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8, -100], [10, -100, -100, -100]]


def test_splits_load_as_blocks_and_hold_out_whole_documents(tokenizer, pycode_slice: Path) -> None:  # noqa: ANN001
    data = load_data(_cfg(pycode_slice), Path("."), tokenizer)
    assert isinstance(data.train, LmSplit) and data.modality == "lm" and data.num_labels == len(tokenizer)
    assert data.train.task == "causal_lm" and data.test.tokens() > 100
    batch = data.train.collate([0, 1])
    assert batch["input_ids"].shape[1] <= 32 and torch.equal(batch["index"], torch.tensor([0, 1]))
    held = DataConfig.model_validate({"format": "jsonl", "train": str(pycode_slice / "train.jsonl"),
                                      "split": {"dev": 0.1, "test": 0.1}})  # fmt: skip
    held._task = "causal_lm"
    from compress.data.dataset import lm_documents

    docs = lm_documents(held, Path("."), seed=0)
    assert [len(docs[k]) for k in ("train", "dev", "test")] == [48, 6, 6]
    assert not set(docs["dev"]) & set(docs["train"])


def test_plain_text_reads_a_file_or_a_folder(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    (tmp_path / "src" / "b.py").write_text("y = 2\n")
    (tmp_path / "one.txt").write_text("hello\n")
    cfg = DataConfig.model_validate({"format": "text", "train": "src"})
    assert lm.read_documents(tmp_path / "src", cfg) == ["x = 1\n", "y = 2\n"]
    assert lm.read_documents(tmp_path / "one.txt", cfg) == ["hello\n"]
    assert cfg.modality == "lm"


def test_bad_corpora_are_named(tmp_path: Path) -> None:
    cfg = DataConfig.model_validate({"format": "jsonl", "train": "x.jsonl"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no 'text' key \(have: body\); set data.columns.text"):
        lm.read_documents(bad, cfg)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "   "}\n')
    with pytest.raises(DataError, match=r"empty.jsonl: no documents \(every one is empty\)"):
        lm.read_documents(empty, cfg)
    with pytest.raises(DataError, match=r"does not exist"):
        lm.read_documents(tmp_path / "missing.jsonl", cfg)
