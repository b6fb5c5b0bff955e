"""This machine: the benchmark script in a fresh Python process."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from compress.devices import DeviceProfile
from compress.errors import DeviceError
from compress.runners.base import BENCH_SCRIPT, BenchRequest, last_line, run_child


class LocalRunner:
    def __init__(self, device: DeviceProfile) -> None:
        self.device = device

    def check(self) -> None:
        from compress.runtimes.base import get_runtime

        ok, why = get_runtime(self.device.runtime).available(self.device.provider)
        if not ok:
            raise DeviceError(f"device {self.device.name!r} cannot be measured here: {why}.")
        if self.device.cpus and hasattr(os, "sched_getaffinity"):
            usable = sorted(os.sched_getaffinity(0))
            missing = [c for c in self.device.cpus if c not in usable]
            if missing:
                raise DeviceError(
                    f"device {self.device.name!r}: cpus: core(s) {', '.join(map(str, missing))} are not available "
                    f"on this machine (usable: {', '.join(map(str, usable))}). Fix `cpus` in the profile."
                )

    def run(self, paths: list[Path], request: BenchRequest) -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(BENCH_SCRIPT), *request.argv([str(p) for p in paths], str(out))]
            proc = run_child(cmd, what="the benchmark", device=self.device.name, timeout=3600, text=True)
            if proc.returncode != 0 or not out.is_file():
                names = ", ".join(p.name for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
                raise DeviceError(
                    f"benchmark of {names} failed on {self.device.name} ({request.runtime}, {request.provider}): "
                    f"{last_line(proc.stderr)}"
                )
            data = json.loads(out.read_text())
        return data if isinstance(data, list) else [data]
