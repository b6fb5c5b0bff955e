"""Training checkpoints: written atomically, read without unpickling code (``torch.load(weights_only=True)``).

A checkpoint holds plain tensors, numbers, strings, lists and dicts only: the model's and the loss terms' state
dicts, the optimisers' and scheduler's states, the step, the position in the epoch, the RNG states, the best
state so far. A file left half-written by `kill -9` is never read: it is renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("compress")
FORMAT = 1


def folder_for(root: Path, label: str) -> Path:
    """One folder per training phase of a stage (a stage may train more than once: masks, then fine-tuning)."""
    return root / (re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "training")


def save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none or it cannot be read (then training starts over,
    with a warning)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint costs the steps since, never the run
        log.warning("checkpoint %s is unreadable (%s: %s); training starts from step 0", path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        log.warning("checkpoint %s has another format; training starts from step 0", path)
        return None
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _plain(random.getstate())}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value
