"""`profile`: latency of every ONNX artifact on each device profile, measured on the device's runtime."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifacts
from compress.context import Context
from compress.devices import resolve_device
from compress.errors import DeviceError, StageError
from compress.recipe.base import Strict
from compress.runtimes.base import get_runtime
from compress.stages.base import StageConfig, register_stage
from compress.ui import progress

log = logging.getLogger("compress")


class Shape(Strict):
    """Input shape used for timing."""

    batch: int = Field(1, gt=0, description="Batch size.")
    sequence: int = Field(128, gt=0, description="Sequence length (text models; ignored for images).")


class ProfileConfig(StageConfig):
    """Measure latency of the ONNX artifacts on device profiles."""

    stage: Literal["profile"]
    devices: list[str] = Field(
        default_factory=lambda: ["x86-cpu"], min_length=1, description="Device profile names or YAML paths."
    )
    shape: Shape = Field(default_factory=Shape, description="Input shape.")  # type: ignore[arg-type]
    runs: int = Field(100, gt=0, description="Timed runs per artifact and device.")
    warmup: int = Field(10, ge=0, description="Untimed warm-up runs.")
    artifacts: list[str] | None = Field(None, description="ONNX artifacts to profile (default: all).")


@register_stage("profile", ProfileConfig)
def run(artifacts: Artifacts, config: ProfileConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    targets = config.artifacts or [n for n, a in artifacts.items() if a.kind == "onnx"]
    missing = [n for n in targets if n not in artifacts]
    if missing or not targets:
        raise StageError(
            f"profile: no ONNX artifact {', '.join(missing) or ''} to measure; add an `export` stage "
            f"before `profile` (have: {', '.join(artifacts) or 'none'})."
        )
    out: Artifacts = {}
    for ref in config.devices:
        device = resolve_device(ref, ctx.base_dir)
        runtime = get_runtime(device.runtime)
        ok, why = runtime.available(device.provider)
        if not ok:
            raise DeviceError(f"device {device.name!r} cannot be measured here: {why}.")
        with progress(f"profiling on {device.name}", len(targets)) as bar:
            for name in targets:
                art = out.get(name) or artifacts[name]
                stats = runtime.benchmark(
                    art.path,
                    threads=device.threads,
                    provider=device.provider,
                    shape=config.shape.model_dump(),
                    runs=config.runs,
                    warmup=config.warmup,
                )
                art.latency = {**art.latency, device.name: stats}
                out[name] = art
                log.info("%s on %s: p50 %.3f ms, p90 %.3f ms", name, device.name, stats["p50_ms"], stats["p90_ms"])
                bar.advance()
    return out
