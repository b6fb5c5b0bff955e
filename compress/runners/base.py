"""The runner interface, the benchmark request every runner executes, and the registry of runners."""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compress.devices import DeviceProfile
from compress.errors import DeviceError
from compress.registry import Registry

BENCH_SCRIPT = Path(__file__).resolve().parent.parent / "runtimes" / "scripts" / "bench.py"


@dataclass(frozen=True)
class BenchRequest:
    """What to measure: the arguments of the self-contained benchmark script."""

    runtime: str = "onnxruntime"
    provider: str | None = None
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    batch: int = 1
    sequence: int = 128
    runs: int = 100
    warmup: int = 10
    seconds: float = 0.0
    top_ops: int = 0
    prompt: int = 128  # causal LMs: the generation shape
    new_tokens: int = 64

    @classmethod
    def for_device(cls, device: DeviceProfile, **kwargs: Any) -> BenchRequest:
        provider = device.provider or ("CPU" if device.runtime == "openvino" else "CPUExecutionProvider")
        cpus = tuple(device.cpus) if device.cpus else None
        return cls(runtime=device.runtime, provider=provider, threads=device.threads, cpus=cpus, **kwargs)

    def argv(self, models: list[str], out: str) -> list[str]:
        args = [*models, "--runtime", self.runtime, "--threads", str(self.threads or 0)]
        args += ["--provider", self.provider or "CPUExecutionProvider", "--batch", str(self.batch)]
        args += ["--sequence", str(self.sequence), "--runs", str(self.runs), "--warmup", str(self.warmup)]
        args += ["--seconds", str(self.seconds), "--top-ops", str(self.top_ops), "--out", out]
        args += ["--prompt", str(self.prompt), "--new-tokens", str(self.new_tokens)]
        if self.cpus:
            args += ["--cpus", ",".join(str(c) for c in self.cpus)]
        return args


class Runner(Protocol):
    def check(self) -> None:
        """Raise DeviceError (naming what to fix) when the device cannot be measured now."""

    def run(self, paths: list[Path], request: BenchRequest) -> list[dict[str, Any]]:
        """Statistics per model, in order."""


# name -> "module:Class": one module per runner, imported when a device uses it (runners never import each other)
RUNNERS: Registry[str] = Registry("runner")
RUNNERS.add("local", "compress.runners.local:LocalRunner")
RUNNERS.add("ssh", "compress.runners.ssh:SshRunner")
RUNNERS.add("adb", "compress.runners.adb:AdbRunner")


def get_runner(device: DeviceProfile) -> Runner:
    module, _, cls = RUNNERS.get(device.runner).partition(":")
    factory: Callable[[DeviceProfile], Runner] = getattr(importlib.import_module(module), cls)
    return factory(device)


def preflight(device: DeviceProfile) -> Runner:
    """The device's runner, checked (runtime installed, host reachable, device attached) before any work."""
    runner = get_runner(device)
    runner.check()
    return runner


def measure(device: DeviceProfile, paths: list[Path], **request: Any) -> list[dict[str, Any]]:
    """Benchmark ``paths`` on ``device``; ``request``: batch, sequence, runs, warmup, seconds, top_ops."""
    stats = get_runner(device).run(paths, BenchRequest.for_device(device, **request))
    for s in stats:
        s["device"] = device.name
        s["runner"] = device.runner
    return stats


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl  # resolved here: no dlopen in a forked child
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGKILL when the compress process dies, even by `kill -9`."""
    with contextlib.suppress(Exception):
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_child(cmd: list[str], *, what: str, device: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a benchmark or device-tool process that never outlives us: killed on Ctrl-C, SIGTERM (turned into
    KeyboardInterrupt by the CLI) and timeouts (``subprocess.run`` kills it), and on Linux when compress itself
    is killed. A timeout is a :class:`DeviceError` naming ``what``; a missing program names it too."""
    preexec = _die_with_parent if _PRCTL is not None else None
    kwargs.setdefault("stdin", subprocess.DEVNULL)  # a benchmark or ssh never reads the user's terminal
    if kwargs["stdin"] is None:
        kwargs["stdin"] = subprocess.DEVNULL
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, preexec_fn=preexec, **kwargs)  # noqa: PLW1509
    except subprocess.TimeoutExpired:
        raise DeviceError(f"device {device!r}: {what} timed out after {timeout:.0f} s and was stopped.") from None
    except FileNotFoundError:
        raise DeviceError(f"device {device!r}: {what}: program {cmd[0]!r} is not installed.") from None


def last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1][:300]
