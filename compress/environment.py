"""What the manifest records about the machine and the software that produced the artifacts."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

PACKAGES = (
    "edge-compress",
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "numpy",
    "pydantic",
    "scikit-learn",
    "nncf",
    "torch-pruning",
    "bitsandbytes",
)


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    keep = [f for f in flags if f.startswith(("avx", "fma", "sse4", "amx", "vnni", "f16c", "bf16"))]
    return {"model": model, "flags": keep, "cores": os.cpu_count()}


def environment() -> dict[str, Any]:
    import torch

    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
    }
