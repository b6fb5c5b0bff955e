"""An Android device over adb: push the model, run the benchmark binary the device profile names (by default
onnxruntime's `onnxruntime_perf_test`, built for Android), parse its summary, remove the pushed files.

The self-contained Python script cannot run on stock Android, hence a native binary and a text parser."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from compress.devices import AdbTarget, DeviceProfile
from compress.errors import DeviceError
from compress.runners.base import RUNNERS, BenchRequest
from compress.runners.local import last_line

_SECONDS = {"s": 1000.0, "ms": 1.0, "us": 1e-3}
_PATTERNS = {  # onnxruntime_perf_test's summary lines -> our keys (value, unit)
    "p50_ms": r"P50 Latency:\s*([\d.eE+-]+)\s*(s|ms|us)",
    "p90_ms": r"P90 Latency:\s*([\d.eE+-]+)\s*(s|ms|us)",
    "p99_ms": r"P99 Latency:\s*([\d.eE+-]+)\s*(s|ms|us)",
    "min_ms": r"Min Latency:\s*([\d.eE+-]+)\s*(s|ms|us)",
    "max_ms": r"Max Latency:\s*([\d.eE+-]+)\s*(s|ms|us)",
    "mean_ms": r"Average inference time cost:\s*([\d.eE+-]+)\s*(s|ms|us)",
    "cold_start_ms": r"Session creation time cost:\s*([\d.eE+-]+)\s*(s|ms|us)",
}


def parse_perf_test(text: str) -> dict[str, Any]:
    """Statistics from onnxruntime_perf_test's output; an error when no latency is found."""
    stats: dict[str, Any] = {}
    for key, pattern in _PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            stats[key] = float(match[1]) * _SECONDS[match[2]]
    if "p50_ms" not in stats and "mean_ms" not in stats:
        raise DeviceError(f"no latency in the benchmark binary's output: {last_line(text)}")
    peak = re.search(r"Peak working set size:\s*(\d+)", text)
    if peak:
        stats["peak_rss_mb"] = int(peak[1]) / 2**20
    runs = re.search(r"Total inference requests:\s*(\d+)", text)
    if runs:
        stats["runs"] = int(runs[1])
    if "mean_ms" in stats:
        stats["throughput_per_s"] = 1000.0 / stats["mean_ms"]
    return stats


class AdbRunner:
    def __init__(self, device: DeviceProfile) -> None:
        assert device.adb is not None  # the profile's validator guarantees it
        self.device, self.target = device, device.adb

    def adb(self, *args: str) -> list[str]:
        t: AdbTarget = self.target
        return ["adb", *(["-s", t.serial] if t.serial else []), *args]

    def bench_command(self, model: str, request: BenchRequest) -> list[str]:
        values = {"model": model, "runs": str(request.runs), "threads": str(request.threads or 0)}
        args = [a.format(**values) for a in self.target.args]
        cmd = shlex.join([self.target.binary, *args])
        if request.cpus:  # pin with taskset (toybox) to the profile's cores
            mask = sum(1 << c for c in request.cpus)
            cmd = f"taskset {mask:x} {cmd}"
        return self.adb("shell", cmd)

    def _call(self, cmd: list[str], what: str, timeout: float = 3600) -> str:
        if shutil.which("adb") is None:
            raise DeviceError(f"device {self.device.name!r}: `adb` is not installed (Android platform-tools).")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise DeviceError(f"device {self.device.name!r}: {what} failed: {last_line(proc.stderr or proc.stdout)}")
        return proc.stdout

    def check(self) -> None:
        state = self._call(self.adb("get-state"), "finding the device (adb get-state)", timeout=30).strip()
        if state != "device":
            raise DeviceError(f"device {self.device.name!r}: adb reports {state!r}, not an attached device.")
        self._call(self.adb("shell", f"test -x {shlex.quote(self.target.binary)}"),
                   f"finding {self.target.binary} on the device (push it first)", timeout=30)  # fmt: skip

    def run(self, paths: list[Path], request: BenchRequest) -> list[dict[str, Any]]:
        workdir = self.target.workdir
        self._call(self.adb("shell", f"mkdir -p {shlex.quote(workdir)}"), "creating the work folder")
        try:
            out = []
            for i, path in enumerate(paths):
                remote = f"{workdir}/m{i}_{path.name}"
                self._call(self.adb("push", str(path), remote), f"pushing {path.name}")
                text = self._call(self.bench_command(remote, request), f"benchmarking {path.name}")
                stats = parse_perf_test(text)
                stats.update({"runtime": self.device.runtime, "provider": request.provider,
                              "threads": request.threads, "runtime_version": "on-device binary"})  # fmt: skip
                out.append(stats)
            return out
        finally:
            subprocess.run(self.adb("shell", f"rm -rf {shlex.quote(workdir)}"), capture_output=True, timeout=60)


RUNNERS.add("adb", AdbRunner)
