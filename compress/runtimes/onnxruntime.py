"""onnxruntime: inference sessions for accuracy, and latency measured in a separate process (ort_bench)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from compress.errors import DeviceError

BENCH_SCRIPT = Path(__file__).parent / "scripts" / "ort_bench.py"


class OrtPredictor:
    def __init__(self, path: Path, threads: int | None, provider: str | None) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=[provider or "CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {n: inputs[n] for n in self.input_names})[0]  # type: ignore[no-any-return]


class OnnxRuntime:
    name = "onnxruntime"

    def version(self) -> str:
        return str(ort.__version__)

    def available(self, provider: str | None) -> tuple[bool, str]:
        have = ort.get_available_providers()
        if provider and provider not in have:
            return False, f"provider {provider} not in this onnxruntime build (have: {', '.join(have)})"
        return True, f"onnxruntime {ort.__version__}"

    def predictor(self, path: Path, *, threads: int | None, provider: str | None) -> OrtPredictor:
        return OrtPredictor(path, threads, provider)

    def benchmark(
        self, path: Path, *, threads: int | None, provider: str | None, shape: dict[str, int], runs: int, warmup: int
    ) -> dict[str, Any]:
        return self.benchmark_many([path], threads=threads, provider=provider, shape=shape, runs=runs, warmup=warmup)[0]

    def benchmark_many(
        self,
        paths: list[Path],
        *,
        threads: int | None,
        provider: str | None,
        shape: dict[str, int],
        runs: int,
        warmup: int,
    ) -> list[dict[str, Any]]:
        """Measure several models one after the other in one benchmark process (one interpreter start)."""
        cmd = [
            sys.executable,
            str(BENCH_SCRIPT),
            *[str(p) for p in paths],
            "--threads",
            str(threads or 0),
            "--provider",
            provider or "CPUExecutionProvider",
            "--batch",
            str(shape["batch"]),
            "--sequence",
            str(shape["sequence"]),
            "--runs",
            str(runs),
            "--warmup",
            str(warmup),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            names = ", ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
            raise DeviceError(f"benchmark of {names} failed on onnxruntime ({provider}): {tail}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return [out] if isinstance(out, dict) else out  # type: ignore[no-any-return]
