"""`profile`: latency of every ONNX artifact on each device profile, measured on the device's runtime."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from compress.artifacts import Artifacts
from compress.context import Context
from compress.devices import resolve_device
from compress.errors import StageError
from compress.recipe.base import Strict
from compress.runners import measure, preflight
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
    seconds: float | None = Field(
        None, gt=0, description="Time budget per artifact and device instead of `runs` (at least 10 runs)."
    )
    warmup: int = Field(10, ge=0, description="Untimed warm-up runs.")
    top_ops: int = Field(
        10, ge=0, description="Operators listed per artifact from the runtime's own profiler (0: none)."
    )
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
    devices = [resolve_device(ref, ctx.base_dir) for ref in config.devices]
    for device in devices:
        preflight(device)  # every device checked before the first measurement
    out: Artifacts = {}
    request = {"batch": config.shape.batch, "sequence": config.shape.sequence, "runs": config.runs,
               "warmup": config.warmup, "seconds": config.seconds or 0.0, "top_ops": config.top_ops}  # fmt: skip
    for device in devices:
        with progress(f"profiling {len(targets)} artifacts on {device.name}", 1) as bar:
            stats = measure(device, [artifacts[n].path for n in targets], **request)
            bar.advance()
        for name, st in zip(targets, stats, strict=True):
            art = out.get(name) or artifacts[name]
            art.latency = {**art.latency, device.name: st}
            out[name] = art
            log.info("%s on %s: p50 %.3f ms, p90 %.3f ms (%s %s)", name, device.name, st["p50_ms"], st["p90_ms"],
                     st.get("runtime"), st.get("runtime_version"))  # fmt: skip
    return out
