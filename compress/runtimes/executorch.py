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


class StaticCacheDecoder:
    """A causal LM's ExecuTorch program (batch 1, its KV cache a fixed-size buffer inside the program):
    ``(input_ids (1, n), cache_position (n,)) -> logits (1, n, vocabulary)``. A prompt is prefilled from position
    0, which starts a new sequence; the same interface as the ONNX graphs' `CachedDecoder`."""

    def __init__(self, path: Path) -> None:
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(str(path)).load_method("forward")

    def prefill(self, ids: list[int] | np.ndarray) -> np.ndarray:
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(1, -1)
        return self.method.execute([ids_t, torch.arange(ids_t.shape[1])])[0][0].numpy()  # type: ignore[no-any-return]

    def step(self, token: int, position: int) -> np.ndarray:
        out = self.method.execute([torch.tensor([[token]]), torch.tensor([position])])[0]
        return out[0, -1].numpy()  # type: ignore[no-any-return]

    def empty(self, batch: int) -> None:
        return None

    def forward(self, ids: np.ndarray, mask: np.ndarray, cache: None) -> tuple[np.ndarray, None]:
        """Logits of every row of a padded batch, each prefilled alone over its real tokens (zeros after)."""
        rows = []
        for row, keep in zip(ids, mask, strict=True):
            n = int(keep.sum())
            logits = self.prefill(row[:n]) if n else None
            full = np.zeros((ids.shape[1], self.vocabulary(logits)), np.float32)
            if logits is not None:
                full[:n] = logits
            rows.append(full)
        return np.stack(rows), None

    def vocabulary(self, logits: np.ndarray | None) -> int:
        if logits is not None:
            self._vocab = int(logits.shape[-1])
        return getattr(self, "_vocab", 0)

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        steps, tokens = [self.prefill(prompt)[-1]], []
        for i in range(new_tokens):
            tokens.append(int(steps[-1].argmax()))
            steps.append(self.step(tokens[-1], len(prompt) + i))
        return tokens, steps
