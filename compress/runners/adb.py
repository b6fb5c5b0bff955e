"""An Android device over adb: push the model, run the benchmark binary the device profile names (by default
onnxruntime's `onnxruntime_perf_test`, built for Android), parse its summary, remove the pushed files.

The self-contained Python script cannot run on stock Android, hence a native binary and a text parser."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from compress.devices import AdbTarget, DeviceProfile
from compress.errors import DeviceError
from compress.runners.base import BenchRequest, last_line, run_child

RUN_FOLDER = re.compile(r"compress-[A-Za-z0-9]{6,}")
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
    if "p50_ms" not in stats:
        raise DeviceError(
            f"no P50 latency in the benchmark binary's output (onnxruntime_perf_test prints percentiles since "
            f"onnxruntime 1.5): {last_line(text)}"
        )
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

    def _call(self, cmd: list[str], what: str, timeout: float | None = None) -> str:
        if shutil.which("adb") is None:
            raise DeviceError(f"device {self.device.name!r}: `adb` is not installed (Android platform-tools).")
        proc = run_child(cmd, what=what, device=self.device.name, timeout=timeout or self.target.timeout_s, text=True)
        if proc.returncode != 0:
            raise DeviceError(f"device {self.device.name!r}: {what} failed: {last_line(proc.stderr or proc.stdout)}")
        return proc.stdout

    def check(self) -> None:
        state = self._call(self.adb("get-state"), "finding the device (adb get-state)", timeout=30).strip()
        if state != "device":
            raise DeviceError(f"device {self.device.name!r}: adb reports {state!r}, not an attached device.")
        self._call(self.adb("shell", f"test -x {shlex.quote(self.target.binary)}"),
                   f"finding {self.target.binary} on the device (push it first)", timeout=30)  # fmt: skip

    def make_run_folder(self) -> str:
        """A fresh folder of our own under the profile's `workdir`; only this folder is ever removed."""
        workdir = shlex.quote(self.target.workdir.rstrip("/") or "/")
        made = self._call(self.adb("shell", f"mkdir -p {workdir} && mktemp -d {workdir}/compress-XXXXXX"),
                          "creating a run folder", timeout=60).strip()  # fmt: skip
        base = self.target.workdir.rstrip("/")
        name = made.rsplit("/", 1)[-1]
        if not made.startswith(f"{base}/compress-") or not RUN_FOLDER.fullmatch(name):
            raise DeviceError(f"device {self.device.name!r}: mktemp printed {made!r}, not a new folder under {base}.")
        return made

    def run(self, paths: list[Path], request: BenchRequest) -> list[dict[str, Any]]:
        folder = self.make_run_folder()
        try:
            out = []
            for i, path in enumerate(paths):
                remote = f"{folder}/m{i}_{path.name}"
                self._call(self.adb("push", str(path), remote), f"pushing {path.name}")
                text = self._call(self.bench_command(remote, request), f"benchmarking {path.name}")
                stats = parse_perf_test(text)
                stats.update({"runtime": self.device.runtime, "provider": request.provider,
                              "threads": request.threads, "runtime_version": "on-device binary"})  # fmt: skip
                out.append(stats)
            return out
        finally:
            with contextlib.suppress(DeviceError):  # best effort; the benchmark's own error matters more
                self._call(self.adb("shell", f"rm -rf {shlex.quote(folder)}"), "cleaning up", timeout=60)
