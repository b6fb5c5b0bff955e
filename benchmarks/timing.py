"""Shared by the benchmarks: latency of several ONNX files measured in one benchmark process, alternating."""

from __future__ import annotations

import statistics
from pathlib import Path

from compress.devices import resolve_device
from compress.runners import measure


def measure_alternating(paths: list[Path], rounds: int = 3, device: str = "x86-cpu") -> list[float]:
    """Median over ``rounds`` of each file's p50 (batch 1, sequence 128); the files take turns, so drift on a
    shared machine hits all of them alike."""
    dev = resolve_device(device)
    stats = measure(dev, paths * rounds, batch=1, sequence=128, runs=100, warmup=10)
    return [statistics.median(s["p50_ms"] for s in stats[i :: len(paths)]) for i in range(len(paths))]
