"""The small interface every runtime implements (one file per runtime, imported lazily)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from compress.errors import RuntimeMissingError
from compress.registry import Registry


class Predictor(Protocol):
    input_names: list[str]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...

    def outputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output, in graph order (a KV-cache decoder returns its cache too)."""
        ...


class Runtime(Protocol):
    """Accuracy (an in-process predictor) and availability; latency is measured by a runner running
    runtimes/scripts/bench.py, which knows each runtime by the same name."""

    name: str

    def available(self, provider: str | None) -> tuple[bool, str]: ...

    def version(self) -> str: ...

    def predictor(self, path: Path, *, threads: int | None, provider: str | None) -> Predictor: ...

    def unsupported(self, path: Path) -> str | None:
        """Why this runtime cannot run the artifact at ``path`` (of its format), or None when it can."""
        ...


@dataclass(frozen=True)
class RuntimeRef:
    """Where a runtime lives and which pip extra installs its package."""

    target: str  # "module:Class"
    package: str
    extra: str
    format: str = "onnx"  # the artifact kind it runs

    def load(self) -> Runtime:
        module_name, _, cls = self.target.partition(":")
        try:
            importlib.import_module(self.package.replace("-", "_"))
        except ImportError:
            raise RuntimeMissingError(
                f"runtime needs the package {self.package!r}: pip install 'edge-compress[{self.extra}]'."
            ) from None
        return getattr(importlib.import_module(module_name), cls)()  # type: ignore[no-any-return]


RUNTIMES: Registry[RuntimeRef] = Registry("runtime")
RUNTIMES.add("onnxruntime", RuntimeRef("compress.runtimes.onnxruntime:OnnxRuntime", "onnxruntime", "onnxruntime"))
RUNTIMES.add(
    "executorch", RuntimeRef("compress.runtimes.executorch:ExecuTorchRuntime", "executorch", "executorch", "pte")
)
RUNTIMES.add("openvino", RuntimeRef("compress.runtimes.openvino:OpenVinoRuntime", "openvino", "openvino"))


def get_runtime(name: str) -> Runtime:
    return RUNTIMES.get(name).load()


def runtime_format(name: str) -> str:
    """The artifact kind a runtime runs (`onnx`, or `pte` for ExecuTorch)."""
    return RUNTIMES.get(name).format
