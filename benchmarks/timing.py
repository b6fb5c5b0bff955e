"""Shared by the benchmarks: latency of several ONNX files measured in one benchmark process, alternating, and
the SST-2 stages every text benchmark reuses."""

from __future__ import annotations

import logging
import shutil
import statistics
from pathlib import Path

from compress import pipeline
from compress.devices import resolve_device
from compress.runners import measure


def log_to_console() -> logging.Logger:
    """The pipeline's progress on the console, as `compress run` shows it."""
    logger = logging.getLogger("compress")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    logger.propagate = False
    return logger


def measure_alternating(paths: list[Path], rounds: int = 3, device: str = "x86-cpu") -> list[float]:
    """Median over ``rounds`` of each file's p50 (batch 1, sequence 128); the files take turns, so drift on a
    shared machine hits all of them alike."""
    dev = resolve_device(device)
    stats = measure(dev, paths * rounds, batch=1, sequence=128, runs=100, warmup=10)
    return [statistics.median(s["p50_ms"] for s in stats[i :: len(paths)]) for i in range(len(paths))]


ROOT = Path(__file__).resolve().parent.parent


def seed_from_sst2_minilm(out: Path, stages: str) -> None:
    """Run (or reuse) recipes/sst2-minilm.yaml and copy its first stages (``stages``: a glob such as "0[0-2]-*")
    into ``out``; recipes that start with the same stages then find them cached."""
    pipeline.run(ROOT / "recipes" / "sst2-minilm.yaml", ROOT / "export" / "sst2-minilm")
    out.mkdir(parents=True, exist_ok=True)
    for folder in sorted((ROOT / "export" / "sst2-minilm").glob(stages)):
        if not (out / folder.name).exists():
            shutil.copytree(folder, out / folder.name)
