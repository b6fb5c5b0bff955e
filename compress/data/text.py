"""Text classification files (TSV / CSV / JSONL) tokenised with the teacher's tokenizer."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from compress.data.config import DataConfig
from compress.errors import DataError


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist. Fix the path (relative to the recipe file).")
    csv.field_size_limit(1 << 24)
    with path.open(encoding="utf-8", newline="") as fh:
        if fmt == "jsonl":
            rows = []
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{i}: not valid JSON ({exc.msg}).") from None
            return rows
        if fmt == "tsv":
            return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
        return list(csv.DictReader(fh))


def extract(rows: list[dict[str, Any]], cfg: DataConfig, path: Path) -> tuple[list[str], list[str] | None, list[Any]]:
    cols = cfg.columns
    if not rows:
        raise DataError(f"data file {path} has no rows.")
    wanted = [c for c in (cols.text, cols.text_pair, cols.label) if c]
    missing = [c for c in wanted if c not in rows[0]]
    if missing:
        have = ", ".join(str(k) for k in rows[0])
        raise DataError(
            f"data file {path} has no column {', '.join(map(repr, missing))} (it has: {have}). "
            "Set data.columns.text / data.columns.label to the right names."
        )
    texts = [str(r[cols.text] or "") for r in rows]
    pairs = [str(r[cols.text_pair] or "") for r in rows] if cols.text_pair else None
    labels = [r[cols.label] for r in rows]
    return texts, pairs, labels


def label_mapping(all_labels: list[list[Any]]) -> dict[str, int]:
    """Integer-like labels keep their value; other labels are sorted and numbered."""
    values = sorted({str(v).strip() for labels in all_labels for v in labels})
    if all(v.lstrip("-").isdigit() for v in values):
        return {v: int(v) for v in values}
    return {v: i for i, v in enumerate(values)}


def tokenize(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> list[list[int]]:
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]
