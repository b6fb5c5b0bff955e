from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.data.config import DataConfig
from compress.data.dataset import load_data
from compress.errors import DataError


class WhitespaceTokenizer:
    """A tokenizer with the Hugging Face call signature, enough to test file parsing."""

    pad_token_id = 0

    def __call__(self, texts, pairs=None, truncation=True, max_length=8, padding=False):  # noqa: ANN001, ANN204
        return {"input_ids": [[len(w) + 1 for w in t.split()][:max_length] or [1] for t in texts]}


def test_jsonl_with_string_labels_and_column_mapping(tmp_path: Path) -> None:
    rows = [{"review": f"text number {i}", "sentiment": "pos" if i % 2 else "neg"} for i in range(40)]
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(format="jsonl", train="all.jsonl", columns={"text": "review", "label": "sentiment"})  # type: ignore[arg-type]
    data = load_data(cfg, tmp_path, WhitespaceTokenizer(), seed=0)
    assert data.label_names == ["neg", "pos"] and data.num_labels == 2
    assert len(data.train) + len(data.dev) + len(data.test) == 40
    again = load_data(cfg, tmp_path, WhitespaceTokenizer(), seed=0)
    assert torch.equal(data.test.labels, again.test.labels)  # seeded split


def test_csv_quotes_and_tsv_literal_quotes(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("sentence,label\n" + '"a, quoted, text",1\nplain,0\n' * 10)
    data = load_data(DataConfig(format="csv", train="d.csv"), tmp_path, WhitespaceTokenizer())
    assert data.num_labels == 2
    (tmp_path / "d.tsv").write_text("sentence\tlabel\n" + "it 's a \" quote\t1\nx\t0\n" * 10)
    data = load_data(DataConfig(format="tsv", train="d.tsv"), tmp_path, WhitespaceTokenizer())
    assert len(data.train) + len(data.dev) + len(data.test) == 20


def test_wrong_column_names_what_the_file_has(tmp_path: Path) -> None:
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nx\t0\n")
    with pytest.raises(DataError, match=r"has no column 'text' \(it has: sentence, label\)"):
        load_data(DataConfig(format="tsv", train="d.tsv", columns={"text": "text"}), tmp_path, WhitespaceTokenizer())  # type: ignore[arg-type]


def test_bad_jsonl_line_is_located(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"sentence": "a", "label": 0}\n{oops\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_data(DataConfig(format="jsonl", train="d.jsonl"), tmp_path, WhitespaceTokenizer())


def test_digits_and_image_folder(tmp_path: Path) -> None:
    digits = load_data(DataConfig(format="sklearn_digits"), tmp_path)
    assert digits.train.features.shape[1:] == (1, 8, 8) and digits.num_labels == 10  # type: ignore[union-attr]
    pil = pytest.importorskip("PIL.Image")
    for split in ("train", "test", "dev"):
        for cls in ("cat", "dog"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(3):
                pil.new("RGB", (10, 10), (i * 40, 0, 0)).save(tmp_path / "img" / split / cls / f"{i}.png")
    cfg = DataConfig(format="image_folder", train="img/train", dev="img/dev", test="img/test", image_size=6)
    data = load_data(cfg, tmp_path)
    assert data.label_names == ["cat", "dog"] and data.in_channels == 3
    batch = next(iter(data.train.loader(4)))
    assert batch["pixel_values"].shape == (4, 3, 6, 6)


def test_tsv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Excel and Notepad save UTF-8 with a byte-order mark; the first column must still be `sentence`."""
    (tmp_path / "bom.tsv").write_bytes("sentence\tlabel\na fine film\t1\na dull film\t0\n".encode("utf-8-sig"))
    cfg = DataConfig(format="tsv", train="bom.tsv", dev="bom.tsv", test="bom.tsv")
    data = load_data(cfg, tmp_path, WhitespaceTokenizer())
    assert len(data.train) == 2 and data.num_labels == 2


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(4):
            pil.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "img" / cls / f"{i}.png")
    good = (tmp_path / "img" / "dog" / "0.png").read_bytes()
    (tmp_path / "img" / "dog" / "9.png").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "img" / "cat" / "9.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"image .*cat/9.jpg cannot be decoded .*Remove or replace the file"):
        load_data(DataConfig(format="image_folder", train="img"), tmp_path)
    (tmp_path / "img" / "cat" / "9.jpg").unlink()
    with pytest.raises(DataError, match=r"image .*dog/9.png cannot be decoded"):
        load_data(DataConfig(format="image_folder", train="img"), tmp_path)


def test_take_keeps_texts_pairs_and_order(tmp_path: Path) -> None:
    rows = [{"a": f"first {i}", "b": f"second {'x' * i}", "label": i % 2} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(format="jsonl", train="d.jsonl", columns={"text": "a", "text_pair": "b", "label": "label"})  # type: ignore[arg-type]
    train = load_data(cfg, tmp_path, WhitespaceTokenizer(), seed=0).train
    assert train.texts is not None and train.pairs is not None
    part = train.take([3, 0, 5], "picked")
    assert part.name == "picked" and len(part) == 3
    assert part.texts == [train.texts[i] for i in (3, 0, 5)] and part.pairs == [train.pairs[i] for i in (3, 0, 5)]
    assert part.features == [train.features[i] for i in (3, 0, 5)]
    assert part.labels.tolist() == [int(train.labels[i]) for i in (3, 0, 5)]
    # the held-out dev split is picked from the one train file: its texts are its own examples'
    dev = load_data(cfg, tmp_path, WhitespaceTokenizer(), seed=0).dev
    assert dev.texts is not None and all(t.startswith("first ") for t in dev.texts)
    assert dev.features == [[len(w) + 1 for w in t.split()] for t in dev.texts]  # each text beside its own ids


def test_digits_are_scikit_learns_without_importing_it() -> None:
    """The digits read from the CSV scikit-learn ships equal `load_digits` (and its import is skipped: 3 s)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from compress.data.images import _digits

    images, target = _digits()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(target, reference.target)
    code = "import sys; from compress.data.images import _digits; _digits(); print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
