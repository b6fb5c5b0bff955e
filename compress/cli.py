"""The `compress` command: parses arguments and calls the same functions the tests call."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.logging import RichHandler
from rich.table import Table

from compress import __version__
from compress.errors import CompressError, Interrupted
from compress.fileio import disk_full
from compress.ui import console
from compress.ui import out as stdout

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distil, prune, quantize, export and profile a PyTorch teacher for a target device.",
)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("compress")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False))
    for h in logger.handlers:
        if isinstance(h, RichHandler):
            h.setLevel(logging.DEBUG if verbose else logging.INFO)
            if os.environ.get("RANK", "0") != "0":  # under a launcher, rank 0 speaks; the others only warn
                h.setLevel(logging.WARNING)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # onnxruntime's quantizer configures the root logger; don't print twice
    for noisy in ("transformers", "onnxruntime", "nncf", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"compress {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: export/<recipe name>).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run every stage, ignoring cached outputs.")] = False,
    only: Annotated[Optional[str], typer.Option(help="Run only this stage (name or 1-based position).")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="Re-run from this stage on.")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the headline, flags, budget checks and paths as JSON on stdout.")
    ] = False,
) -> None:
    """Run a recipe: every stage in order, reusing finished stages from the cache."""
    if not console.is_terminal:  # CI logs: no per-weight progress bars of the libraries between our lines
        # (transformers reads it when it is imported, as huggingface_hub does; importing transformers here to
        # switch its bars off cost every run a second, runs that never use it included)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from compress import pipeline

    result = pipeline.run(recipe, out, force=force, only=only, from_stage=from_)
    if not result.report:  # another process of a launched run: rank 0 reports
        return
    from compress.report.report import describe_headline

    report = result.report
    if json_out:
        keys = ("headline", "flags", "budgets", "ship", "devices")
        fields = ("path", "precision", "size_bytes", "metrics", "latency")
        arts = {r["name"]: {k: r[k] for k in fields} for r in report["artifacts"]}
        typer.echo(json.dumps({"out_dir": str(result.out_dir), **{k: report.get(k) for k in keys}, "artifacts": arts},
                              indent=2))  # fmt: skip
        return
    stdout.print(_report_table(report))
    for flag in report.get("flags", []):
        stdout.print(f"[yellow]warning[/]: {flag['message']}", highlight=False)
    for item in report.get("headline", []):
        stdout.print(describe_headline(item).replace("**", "").replace("`", ""), highlight=False)
    for device, folder in (report.get("ship") or {}).items():
        stdout.print(f"ship folder for {device}: {result.out_dir / folder}", highlight=False)
    stdout.print(f"artifacts, report.md/json and manifest.json in {result.out_dir}")


def _report_table(report: dict) -> Table:
    from compress.report.report import quality_column

    devices = report["devices"]
    quality = quality_column(report["artifacts"])
    table = Table("artifact", "precision", "params", "size MB", quality[0], title=report["recipe"].get("name"))
    for d in devices:
        table.add_column(f"{d} p50 ms", justify="right")
        table.add_column("speed-up vs source", justify="right")
    for row in report["artifacts"]:
        cells = [
            row["name"],
            row["precision"],
            f"{row['params'] / 1e6:.2f}M" if row["params"] else "-",
            f"{row['size_bytes'] / 1e6:.2f}",
            quality[1](row),
        ]
        for d in devices:
            st = row["latency"].get(d, {})
            cells.append(f"{st['p50_ms']:.3f}" if st else "-")
            sp = st.get("speedup_vs_baseline")
            cells.append(f"{sp:.2f}x" if sp is not None else "-")
        table.add_row(*cells)
    return table


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the checks as a JSON list.")] = False,
) -> None:
    """Check the schema and resolve every model, data set and device, without training."""
    from compress import pipeline

    checks = pipeline.validate(recipe)
    if json_out:
        typer.echo(json.dumps({"ok": True, "checks": checks}, indent=2))
        return
    for line in checks:
        stdout.print(f"[green]ok[/] {line}", highlight=False)


@app.command()
def profile(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    device: Annotated[list[str], typer.Option(help="Device profile name or YAML file (repeatable).")],
    batch: Annotated[int, typer.Option(min=1, max=65536, help="Batch size.")] = 1,
    sequence: Annotated[int, typer.Option(min=1, max=1 << 20, help="Sequence length for text models.")] = 128,
    runs: Annotated[int, typer.Option(min=1, help="Timed runs.")] = 100,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up runs.")] = 10,
    seconds: Annotated[
        float, typer.Option(min=0, max=86400, help="Time budget per device instead of --runs (0: use --runs).")
    ] = 0,
    top_ops: Annotated[int, typer.Option(min=0, help="Operators listed from the runtime's profiler.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure the latency of one ONNX file on device profiles."""
    from compress.devices import resolve_device
    from compress.errors import ExportError
    from compress.runners import measure, preflight

    if not model.is_file():
        raise ExportError(f"model file {model} does not exist.")
    devs = [resolve_device(ref) for ref in device]
    for dev in devs:
        preflight(dev)
    results = {}
    for dev in devs:
        results[dev.name] = measure(dev, [model], batch=batch, sequence=sequence, runs=runs, warmup=warmup,
                                    seconds=seconds, top_ops=top_ops)[0]  # fmt: skip
    if json_out:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table(
        "device", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "throughput/s", "cold start ms", "peak RSS MB"
    )

    def cell(st: dict, key: str, fmt: str) -> str:  # a board's benchmark binary may not report every statistic
        value = st.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    for name, st in results.items():
        table.add_row(
            name,
            *(cell(st, k, ".3f") for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")),
            cell(st, "throughput_per_s", ".1f"),
            cell(st, "cold_start_ms", ".1f"),
            cell(st, "peak_rss_mb", ".0f"),
        )
    stdout.print(table)


@app.command()
def devices(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the built-in device profiles and whether each can be measured here."""
    from compress.devices import builtin_names, resolve_device
    from compress.runners import preflight

    table = Table("device", "runtime", "provider", "threads", "runner", "can run here", "description")
    rows = []
    for name in builtin_names():
        dev = resolve_device(name)
        try:
            preflight(dev)
            ok, why = True, ""
        except CompressError as exc:
            ok, why = False, str(exc).removeprefix(f"device {name!r}").lstrip(": ")
        where = dev.runner if dev.runner == "local" else f"{dev.runner} ({dev.ssh.host if dev.ssh else 'adb'})"
        table.add_row(name, dev.runtime, dev.provider or "-", str(dev.threads or "all"), where,
                      "yes" if ok else f"no: {why}", dev.description)  # fmt: skip
        rows.append({"device": name, "runtime": dev.runtime, "provider": dev.provider, "threads": dev.threads,
                     "runner": dev.runner, "can_run_here": ok, "why_not": why or None,
                     "description": dev.description})  # fmt: skip
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    stdout.print(table)


@app.command()
def compare(
    old: Annotated[Path, typer.Argument(help="report.json of the reference run.")],
    new: Annotated[Path, typer.Argument(help="report.json of the run to check.")],
    confidence: Annotated[float, typer.Option(help="Confidence of the shift's interval: 0.95, 0.99 or 0.999.")] = 0.99,
    min_change: Annotated[
        float,
        typer.Option(
            min=0,
            max=10,
            help="Smallest slow-down (0.02 = 2%) called a regression; raised per device to the largest change of an "
            "artifact whose bytes are identical in both reports (the machine's between-run drift).",
        ),
    ] = 0.02,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Flag latency regressions between two reports, beyond the run-to-run noise measured in them (exit 4)."""
    from compress.errors import RegressionError, ReportError, StageError
    from compress.fileio import read_text
    from compress.report.compare import Z, check_report, compare, render

    if confidence not in Z:
        raise StageError(f"--confidence {confidence}: use one of {', '.join(map(str, Z))}.")
    reports = []
    for path in (old, new):
        text = read_text(path, "report", ReportError, max_bytes=1 << 30)
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ReportError(f"{path}: not a readable report.json (invalid JSON: {exc}).") from None
        reports.append(check_report(data, str(path)))
    rows = compare(reports[0], reports[1], confidence=confidence, min_change=min_change)
    if not rows:
        raise StageError(f"{old} and {new} share no artifact measured on the same device: nothing to compare.")
    typer.echo(json.dumps(rows, indent=2) if json_out else render(rows, confidence))
    bad = [r for r in rows if r["verdict"] == "regression"]
    if bad:
        worst = max(bad, key=lambda r: r["change"])
        raise RegressionError(
            f"{len(bad)} latency regression(s) beyond measured noise; worst: {worst['artifact']} on "
            f"{worst['device']} {worst['old_p50_ms']:.3f} -> {worst['new_p50_ms']:.3f} ms "
            f"({100 * worst['change']:+.1f}%)."
        )


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the recipe reference as Markdown.")] = False,
) -> None:
    """Print the JSON Schema of a recipe (point your editor's YAML plugin at it)."""
    if markdown:
        from compress.recipe.docs import render

        typer.echo(render(), nl=False)
        return
    from compress.recipe.schema import Recipe

    typer.echo(json.dumps(Recipe.model_json_schema(), indent=2))


def _on_signal(signum: int, _frame: object) -> None:
    name = signal.Signals(signum).name
    raise Interrupted(name, 128 + signum)


def main() -> None:
    """Entry point: every user mistake is one paragraph and a non-zero exit, never a library traceback."""
    signal.signal(signal.SIGINT, _on_signal)  # typer would turn Ctrl-C into a silent exit 130
    signal.signal(signal.SIGTERM, _on_signal)  # a cancelled CI job: clean up like Ctrl-C, then say so
    try:
        app()  # typer prints usage errors itself; our signal handlers raise Interrupted, which it lets through
    except CompressError as exc:
        _error(str(exc), exc.exit_code)
    except Interrupted as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up message
        where = f" during {exc.where}" if exc.where else ""
        console.print(
            f"[bold red]interrupted[/] by {exc.signal_name}{where}. Finished stages are cached and temporary files "
            "were removed: run the same command again to resume.",
            highlight=False,
        )
        sys.exit(exc.exit_code)
    except MemoryError:
        _error("out of memory. Use smaller batches (batch_size, eval_batch_size) or a machine with more memory.", 2)
    except RecursionError:
        _error("input nested too deeply to process.", 2)
    except UnicodeDecodeError as exc:
        _error(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}). Check the files the command reads.", 2)
    except OSError as exc:
        full = disk_full(exc, Path(exc.filename or "."))
        if full is not None:
            _error(str(full), full.exit_code)
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"{where}{exc.strerror or exc}.", 2)


def _error(message: str, code: int) -> None:
    console.print(f"[bold red]error[/]: {message}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
