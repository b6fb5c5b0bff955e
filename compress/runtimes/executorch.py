"""ExecuTorch with the XNNPACK backend, run here through its Python runtime: the same program (.pte) and
kernels an Android or iOS app loads. Accuracy through an in-process predictor (static shapes: inputs are padded
to the exported shape and run in chunks); latency through the benchmark script (runtime `executorch`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _fit(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, min(a, s)) for a, s in zip(array.shape, shape, strict=True))] = array[
        tuple(slice(0, min(a, s)) for a, s in zip(array.shape, shape, strict=True))
    ]
    return out


class EtPredictor:
    def __init__(self, path: Path, threads: int | None, provider: str | None) -> None:
        from executorch.runtime import Runtime

        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        meta = self.method.metadata
        self.shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        self.input_names = ["input_ids", "attention_mask"] if len(self.shapes) == 2 else ["pixel_values"]

    def outputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [self(inputs)]  # the programs `export` writes have one output: the logits

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        arrays = [inputs[n] for n in self.input_names]
        rows, step = arrays[0].shape[0], self.shapes[0][0]
        out = []
        for start in range(0, rows, step):
            chunk = [_fit(a[start : start + step], s) for a, s in zip(arrays, self.shapes, strict=True)]
            logits = self.method.execute([torch.from_numpy(c) for c in chunk])[0]
            out.append(logits.numpy()[: min(step, rows - start)])
        return np.concatenate(out)


class ExecuTorchRuntime:
    name = "executorch"

    def version(self) -> str:
        from importlib.metadata import version

        return version("executorch")

    def available(self, provider: str | None) -> tuple[bool, str]:
        if provider not in (None, "XNNPACK"):
            return False, f"provider {provider} is not built in here (ExecuTorch's Python runtime has XNNPACK)"
        return True, f"executorch {self.version()}"

    def predictor(self, path: Path, *, threads: int | None, provider: str | None) -> EtPredictor:
        return EtPredictor(path, threads, provider)

    def unsupported(self, path: Path) -> str | None:
        return None  # every artifact of its format that `export` and `quantize` write
