"""Atomic writes and content hashes: a crash never leaves a half-written file that a later run trusts."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from compress.errors import CompressError, DiskFullError


def default_mode(path: Path | str) -> None:
    """Give a file made by mkstemp (mode 0600) the mode every other file of a run has: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    default_mode(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's (relative path, file hash) list."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def read_text(path: Path, what: str, error: type[CompressError], *, max_bytes: int | None = None) -> str:
    """A user-supplied text file as str: UTF-8 (a byte-order mark is skipped). A missing file, a folder, a
    file over ``max_bytes`` or bytes that are not UTF-8 raise ``error`` naming ``what`` and the file."""
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise error(f"{what} {path} is {path.stat().st_size:,} bytes; at most {max_bytes:,} are read. "
                        "Is this the right file?")  # fmt: skip
        raw = path.read_bytes()
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder, not a file.") from None
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist.") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}.") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(
            f"{what} {path}:{line} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}). "
            "Save it as UTF-8; is it the right file?"
        ) from None


def disk_full(exc: BaseException, where: Path) -> DiskFullError | None:
    """A :class:`DiskFullError` naming ``where`` when ``exc`` (or what it wraps) is 'no space left on device'."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if (
            isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)
        ) or "No space left on device" in str(seen):
            try:
                free = shutil.disk_usage(where if where.exists() else where.parent).free
                left = f" ({free / 1e6:.0f} MB free now)"
            except OSError:
                left = ""
            return DiskFullError(
                f"the disk is full: no space left on the file system of {where}{left}. Free some space (or pass "
                "--out on another disk) and re-run: finished stages are cached."
            )
        seen = seen.__cause__ or seen.__context__
    return None
