"""OpenVINO: reads the ONNX artifact directly; accuracy through a compiled model, latency through the
benchmark script (runtime `openvino`). Installed with the `openvino` extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov


class OvPredictor:
    def __init__(self, path: Path, threads: int | None, device: str | None) -> None:
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), device or "CPU", config)
        # a tensor may have several names (`past.0.key` and an internal `/Concat_output_0`): keep the graph's own
        self.input_names = [next((n for n in sorted(p.get_names()) if not n.startswith("/")), p.get_any_name())
                            for p in self.compiled.inputs]  # fmt: skip

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.outputs(inputs)[0]

    def outputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.compiled({n: inputs[n] for n in self.input_names})
        return [np.asarray(out[o]) for o in self.compiled.outputs]


class OpenVinoRuntime:
    name = "openvino"

    def version(self) -> str:
        return str(ov.get_version())

    def available(self, provider: str | None) -> tuple[bool, str]:
        have = ov.Core().available_devices
        device = provider or "CPU"
        if device.split(".")[0] not in {d.split(".")[0] for d in have}:
            return False, f"OpenVINO device {device} not found (have: {', '.join(have) or 'none'})"
        return True, f"openvino {ov.get_version()}"

    def predictor(self, path: Path, *, threads: int | None, provider: str | None) -> OvPredictor:
        return OvPredictor(path, threads, provider)

    def unsupported(self, path: Path) -> str | None:
        """OpenVINO reads standard ONNX, not every onnxruntime contrib operator (e.g. the QAttention and
        DynamicQuantizeMatMul of onnxruntime's fused int8 graphs): reading the model is the exact test."""
        try:
            ov.Core().read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own exception types for unsupported ops
            lines = [ln.strip(" -") for ln in str(exc).splitlines() if ln.strip()]
            said = [ln for ln in lines if "operations" in ln or "not supported" in ln.lower()]
            return ((said or lines[-1:]) or [type(exc).__name__])[0][:300]
        return None
