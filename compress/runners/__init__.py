"""Where a benchmark runs: this machine, a Linux board over SSH, an Android device over adb.

`measure(device, paths, ...)` is the one entry point: it picks the runner the device profile names and the
runtime it names, and returns one statistics dict per model (see runtimes/scripts/bench.py)."""

from compress.runners.base import BenchRequest, get_runner, measure, preflight

__all__ = ["BenchRequest", "get_runner", "measure", "preflight"]
