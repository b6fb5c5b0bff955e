"""Text classification files (TSV / CSV / JSONL) tokenised with the teacher's tokenizer."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from compress.data.config import DataConfig
from compress.errors import DataError
from compress.fileio import read_text

MAX_CLASSES = 100_000  # integer class ids beyond this are an id column, not labels


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Every row of a TSV / CSV (header line first) or JSONL file, as a dict; a row is ``{"_line": n, ...}``
    aware through :func:`extract`, which names the line of a bad row."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist. Fix the path (relative to the recipe file).")
    text = read_text(path, "data file", DataError)  # UTF-8, with or without a byte-order mark
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{i}: not valid JSON ({exc.msg}).") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{i}: each line must be a JSON object with the text and label keys.")
                rows.append({**row, _LINE: i})
        return rows
    csv.field_size_limit(1 << 24)
    delimiter = "\t" if fmt == "tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)  # fmt: skip
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():  # more or fewer fields than the header line
                have = len([v for k, v in row.items() if k is not None and v is not None])
                extra = len(row.get(None) or [])  # type: ignore[call-overload]
                raise DataError(
                    f"{path}:{reader.line_num}: {have + extra} fields where the header has "
                    f"{len(reader.fieldnames or [])} (a missing or extra {'tab' if fmt == 'tsv' else 'comma'}?)."
                )
            rows.append({**row, _LINE: reader.line_num})
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({exc}).") from None
    return rows


_LINE = "\0line"  # the file line of a row, for error messages (not a possible column name)


def _short(name: str, limit: int = 60) -> str:
    """A column name as an error shows it (a whole line read as a header is cut)."""
    return name if len(name) <= limit else name[:limit] + "..."


def extract(rows: list[dict[str, Any]], cfg: DataConfig, path: Path) -> tuple[list[str], list[str] | None, list[Any]]:
    cols = cfg.columns
    if not rows:
        raise DataError(f"data file {path} has no rows.")
    wanted = [c for c in (cols.text, cols.text_pair, cols.label) if c]
    missing = [c for c in wanted if c not in rows[0]]
    if missing:
        have = ", ".join(_short(str(k)) for k in rows[0] if k != _LINE)
        raise DataError(
            f"data file {path} has no column {', '.join(map(repr, missing))} (it has: {have}). "
            "Set data.columns.text / data.columns.label to the right names."
        )
    for row in rows:
        absent = [c for c in wanted if c not in row]
        if absent:
            raise DataError(f"{path}:{row.get(_LINE, '?')}: no {', '.join(map(repr, absent))} in this row.")
        label = row[cols.label]
        if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip().lower() in (
            "", "nan", "none", "null",
        ):  # fmt: skip
            raise DataError(
                f"{path}:{row.get(_LINE, '?')}: empty or missing label {label!r} in column {cols.label!r}. "
                "Every example needs a label; remove the row or fill it in."
            )
        if isinstance(label, (dict, list)):
            raise DataError(f"{path}:{row.get(_LINE, '?')}: label {label!r} is not a class name or id.")
    texts = [str(r[cols.text] or "") for r in rows]
    pairs = [str(r[cols.text_pair] or "") for r in rows] if cols.text_pair else None
    labels = [r[cols.label] for r in rows]
    return texts, pairs, labels


def label_mapping(splits: dict[str, tuple[Path, list[Any]]], column: str = "label") -> dict[str, int]:
    """Class ids for the labels of every split (``{split: (file, labels)}``; ``train`` first).

    Integer labels keep their value (they must be 0..K-1, not an id column); other labels are sorted and
    numbered. A label column with one class, labels in dev/test that training never sees, and an id column
    chosen as the label are errors: each would train a model that cannot be right."""
    train_path, train = splits["train"]
    values = sorted({str(v).strip() for _, labels in splits.values() for v in labels})
    integer = all(v.lstrip("-").isdigit() for v in values)
    seen = {str(v).strip() for v in train}
    key = f"data.columns.label ({column!r})"
    if len(seen) < 2:
        raise DataError(
            f"{train_path}: the label column {column!r} has {len(seen)} class ({', '.join(sorted(seen))}) in "
            f"training; classification needs at least 2. Is {key} the right column?"
        )
    if len(train) >= 20 and len(seen) > len(train) // 2:
        raise DataError(
            f"{train_path}: {len(seen):,} different labels in {len(train):,} training rows: column {column!r} "
            f"looks like an id or a text, not a class label. Set {key} to the class column."
        )
    for name, (path, labels) in splits.items():
        unseen = sorted({str(v).strip() for v in labels} - seen)
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5]) + (" ..." if len(unseen) > 5 else "")
            raise DataError(
                f"{path}: {len(unseen)} label(s) of the {name} split never occur in training ({shown}); the "
                "model could never predict them. Fix the labels or the split."
            )
    if integer:
        ids = {v: int(v) for v in values}
        negative = [v for v, i in ids.items() if i < 0]
        if negative:
            raise DataError(
                f"{train_path}: integer labels must be class ids 0..K-1; found {negative[0]}. Renumber the "
                "labels or use class names."
            )
        if max(ids.values()) >= MAX_CLASSES:
            raise DataError(
                f"{train_path}: label {max(ids.values()):,} in column {column!r} would mean "
                f"{max(ids.values()) + 1:,} classes: an id column? Integer labels are class ids 0..K-1; set {key} "
                "to the class column."
            )
        return ids
    return {v: i for i, v in enumerate(values)}


def tokenize(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> list[list[int]]:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]
