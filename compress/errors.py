"""Typed errors. Every error a user can cause derives from :class:`CompressError`.

The CLI prints ``str(error)`` (one paragraph, no traceback) and exits with ``error.exit_code``.
"""

from __future__ import annotations

from typing import Any


class CompressError(Exception):
    """Base class: a problem the user can fix. The message names the key or file and the fix."""

    exit_code = 2


class RecipeError(CompressError):
    """The recipe file is malformed, has unknown keys or invalid values."""


class RegistryError(CompressError):
    """A name (stage, loss, runtime, device...) that is not registered."""


class DataError(CompressError):
    """A data file is missing or does not have the expected columns or layout."""


class ModelError(CompressError):
    """A model cannot be found, loaded, built or saved."""


class ExportError(CompressError):
    """A model does not export, or the exported artifact does not match PyTorch."""


class QuantizationError(CompressError):
    """A model cannot be quantized as asked (bit width, layers, or an artifact that stayed float)."""


class DeviceError(CompressError):
    """A device profile is unknown, malformed, or cannot be measured here."""


class RuntimeMissingError(CompressError):
    """A runtime package is not installed; the message names the pip extra to install."""


class StageError(CompressError):
    """A stage cannot run with the artifacts it was given."""


class OutputError(CompressError):
    """The output folder cannot be used: not writable, a file, locked by another run, or the disk is full."""


class DiskFullError(OutputError):
    """No space left on the device that holds the output (or a temporary) folder."""


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, which no `except Exception` swallows
    """Ctrl-C (SIGINT) or SIGTERM (a cancelled CI job), raised by the CLI's signal handlers so that every
    `finally` runs: temporary stage folders are removed and child processes are stopped."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(signal_name)
        self.signal_name, self.exit_code = signal_name, exit_code
        self.where = ""  # the stage that was running, filled in by the pipeline


class ReportError(CompressError):
    """A report.json given to `compress compare` is unreadable or not shaped as `compress run` writes it."""


class BudgetError(CompressError):
    """A latency/size/accuracy budget was missed (after every artifact and the report were written: ``result``
    holds the run, for callers such as benchmarks that report misses instead of stopping)."""

    exit_code = 3
    result: Any = None


class RegressionError(CompressError):
    """`compress compare` found a latency regression beyond the measured noise."""

    exit_code = 4
