"""Console output: one rich console, progress bars that stay quiet when output is not a terminal."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)  # logs, progress, warnings and errors
if not console.is_terminal:
    console.width = 160  # logs and CI: no terminal to size tables by
out = Console()  # what a command was asked to show (tables, checks, the headline): `compress devices | grep ...`
if not out.is_terminal:
    out.width = 160


LOG_EVERY_S = 30.0  # outside a terminal: one progress line per this many seconds


class Bar:
    def __init__(self, progress: Progress | None, task: TaskID | None, description: str = "",
                 total: int | None = None) -> None:  # fmt: skip
        self._progress, self._task = progress, task
        self._description, self._total, self._done = description, total, 0
        self._start = self._last = time.monotonic()

    def advance(self, n: int = 1, **fields: object) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, **fields)  # type: ignore[arg-type]
            return
        # no terminal (CI, a log file): a plain line now and then, with the rate and what is left
        self._done += n
        now = time.monotonic()
        if now - self._last < LOG_EVERY_S or (self._total is not None and self._done >= self._total):
            return
        self._last = now
        rate = self._done / max(now - self._start, 1e-9)
        left = f", ETA {_clock((self._total - self._done) / rate)}" if self._total and rate > 0 else ""
        of = f"/{self._total}" if self._total else ""
        info = f", {fields['info']}" if fields.get("info") else ""
        logging.getLogger("compress").info("%s: %d%s%s, %.2f/s%s", self._description, self._done, of, info, rate, left)

    def describe(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, info=text)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Bar]:
    """A progress bar with an `info` text field; a no-op when stderr is not a terminal."""
    if not console.is_terminal:
        yield Bar(None, None, description, total)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=True) as prog:
        yield Bar(prog, prog.add_task(description, total=total, info=""))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
