"""onnxruntime: inference sessions for accuracy (latency: runners + runtimes/scripts/bench.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

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
        return self.outputs(inputs)[0]

    def outputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {n: inputs[n] for n in self.input_names})  # type: ignore[return-value]


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

    def unsupported(self, path: Path) -> str | None:
        return None  # every artifact of its format that `export` and `quantize` write
