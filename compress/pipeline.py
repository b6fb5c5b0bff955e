"""Runs a recipe: stages in order, each cached under a key of its config and its inputs' hashes."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress import __version__
from compress.artifacts import Artifact, Artifacts
from compress.context import Context
from compress.environment import environment
from compress.errors import BudgetError, CompressError, Interrupted, OutputError, RecipeError, StageError
from compress.families import family_of_source
from compress.fileio import atomic_write_json, default_mode, disk_full, sha256_json, sha256_path
from compress.recipe.chain import check_chain
from compress.recipe.load import load_recipe
from compress.recipe.schema import Recipe
from compress.report import budgets
from compress.report.report import build_report, headline, write_report
from compress.ship import write_ship_folders
from compress.stages import STAGES
from compress.stages.teacher import TeacherConfig
from compress.training.engine import Engine

log = logging.getLogger("compress")
STAGE_FILE = "stage.json"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"  # inside a stage's temporary folder: what a re-run resumes from


@dataclass
class StageRecord:
    index: int
    stage: str
    key: str
    dir: str
    cached: bool
    seconds: float


@dataclass
class RunResult:
    out_dir: Path
    artifacts: Artifacts
    stages: list[StageRecord] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def _stage_key(config: dict[str, Any], inputs: Artifacts, ctx: Context, trains: bool) -> str:
    """What the stage's output depends on. Never the device or the number of processes (a run on 1 process
    and one on 4 reuse each other's stages); a training stage's precision when it is not fp32."""
    training = ctx.engine.key() if trains else {}
    return sha256_json(
        {
            "config": config,
            "inputs": {n: a.sha256 for n, a in sorted(inputs.items())},
            "data": ctx.data_fingerprint(),
            "seed": ctx.seed,
            "version": __version__,
            **({"training": training} if training else {}),
        }
    )


def _load_stage(folder: Path, out_dir: Path) -> Artifacts | None:
    """A finished stage's artifacts, each checked against the sha256 recorded when it was made; None (the stage
    runs again) when stage.json is unreadable or any artifact is missing or changed since."""
    try:
        data = json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
        produced = {a["name"]: Artifact.from_json(a, out_dir) for a in data["artifacts"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s/%s is unreadable (%s); the stage runs again", folder.name, STAGE_FILE, type(exc).__name__)
        return None
    for art in produced.values():
        if not art.path.is_relative_to(folder):
            continue  # an input passed through (e.g. an external file), verified where it was made
        if not art.path.exists() or sha256_path(art.path) != art.sha256:
            log.warning(
                "cached artifact %s in %s is %s since it was made; the stage runs again", art.name, folder.name,
                "missing" if not art.path.exists() else "changed",
            )  # fmt: skip
            return None
    return produced


def _save_stage(tmp: Path, final: Path, produced: Artifacts, out_dir: Path, meta: dict[str, Any]) -> Artifacts:
    """Write stage.json last, then rename the folder into place: only complete stages are ever trusted."""
    for art in produced.values():
        if art.path.is_relative_to(tmp):
            art.path = final / art.path.relative_to(tmp)
    atomic_write_json(tmp / STAGE_FILE, {**meta, "artifacts": [a.to_json(out_dir) for a in produced.values()]})
    for f in tmp.rglob("*"):  # libraries write with their own modes (safetensors: 0600): one mode for a run's files
        if f.is_file() and not f.is_symlink():
            default_mode(f)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return produced


def _library_failure(exc: Exception, pos: int, name: str, entry: Any, recipe: Recipe, out_dir: Path) -> StageError:
    """A one-paragraph error for an exception raised inside a library (torch-pruning on a model it cannot trace,
    a loss on mismatched shapes, an exporter on an unsupported operator): the stage, the model, where it failed
    and what to try; the traceback goes to compress.log."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    package = Path(__file__).resolve().parent
    outside = [f for f in frames if not Path(f.filename).resolve().is_relative_to(package)]
    where = ""
    if outside:
        parts = Path(outside[-1].filename).parts
        lib = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("site-packages", "dist-packages")), None)
        where = f" inside {lib or Path(outside[-1].filename).name}"
    model = next(
        (
            f"{key} {v!r}"
            for key in ("source", "models")
            if isinstance(v := getattr(entry, key, None), str | list) and v
        ),
        None,
    ) or (f"the student ({entry.student.describe()})" if getattr(entry, "student", None) else None)
    model = model or f"the teacher ({recipe.teacher.describe()})"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return StageError(
        f"stage {pos} ({name}) failed on {model}{where}: {type(exc).__name__}: {first}. This model (or a setting of "
        f"this stage) is not supported by that step; check the stage's keys against docs/recipe.md, or try another "
        f"method. The full traceback is in {out_dir / 'compress.log'}."
    )


def _select(recipe: Recipe, ref: str | None, flag: str) -> int | None:
    if ref is None:
        return None
    names = [s.stage for s in recipe.stages]
    if ref.isdigit() and 1 <= int(ref) <= len(names):
        return int(ref) - 1
    hits = [i for i, n in enumerate(names) if n == ref]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise RecipeError(
            f"{flag} {ref!r} is ambiguous: the recipe has {len(hits)} such stages; pass its "
            f"1-based position ({', '.join(str(h + 1) for h in hits)})."
        )
    raise RecipeError(f"{flag} {ref!r}: the recipe has no such stage (stages: {', '.join(names)}).")


def _prepare_out(out_dir: Path) -> None:
    """The output folder exists and is writable, or a clear error says why not."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise OutputError(f"output folder {out_dir} is a file, not a folder. Pass --out with a folder path.")
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _os_error(exc, out_dir) from None


def _os_error(exc: OSError, out_dir: Path) -> OutputError:
    full = disk_full(exc, out_dir)
    if full is not None:
        return full
    where = exc.filename or out_dir
    return OutputError(
        f"output folder {out_dir}: cannot write {where}: {exc.strerror or exc}. Pass --out with a writable "
        "folder (and a short enough path)."
    )


@contextlib.contextmanager
def recipe_imports(recipe_path: Path) -> Iterator[None]:
    """The recipe's folder on the import path while it runs: `python: models:build` finds `models.py` beside the
    recipe, as a user expects, without PYTHONPATH."""
    folder = str(recipe_path.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    """One run at a time per output folder: a second run into the same --out would redo and race on every
    stage folder. The lock is advisory (fcntl) and released by the kernel when the process dies, even by
    `kill -9`, so a crashed run never blocks the next one."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not guarded
        yield
        return
    path = out_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise _os_error(exc, out_dir) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutputError(
                f"output folder {out_dir} is in use by another compress run ({holder}). Wait for it to finish, "
                "or pass another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def _remove_stale(out_dir: Path, keep_checkpoints: bool = True) -> None:
    """Temporary stage folders and files left by a run that was killed (we hold the lock: none is in use). A
    stage folder's training checkpoints stay (the stage resumes from them) unless ``keep_checkpoints`` is off."""
    stale = [*out_dir.glob(".*.tmp"), *out_dir.glob(".*.tmp.png")]
    for tmp in out_dir.glob(".tmp-*"):
        if keep_checkpoints and (tmp / CHECKPOINTS).is_dir() and tmp.is_dir() and not tmp.is_symlink():
            stale += [p for p in tmp.iterdir() if p.name != CHECKPOINTS]
        else:
            stale.append(tmp)
    if (out_dir / ".cache").is_dir():
        stale += [p for p in (out_dir / ".cache").rglob("*.tmp") if p.is_file()]
    for path in stale:
        log.info("removing %s, left by an interrupted run", path.name)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class _LogHandler(logging.StreamHandler):
    """compress.log, opened without following a symbolic link (a planted link must not redirect our writes)."""

    def __init__(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OutputError(
                    f"{path} is a symbolic link; compress writes its log only to a regular file. Remove the link."
                ) from None
            raise _os_error(exc, path.parent) from None
        super().__init__(os.fdopen(fd, "a", encoding="utf-8"))

    def close(self) -> None:
        try:
            self.stream.close()
        finally:
            super().close()


def _attach_log(out_dir: Path) -> logging.Handler:
    handler = _LogHandler(out_dir / "compress.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)  # the log file keeps what the console leaves out (tracebacks of failures)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    return handler


def run(
    recipe_path: Path,
    out: Path | None = None,
    *,
    force: bool = False,
    only: str | None = None,
    from_stage: str | None = None,
) -> RunResult:
    """Run every stage of the recipe at ``recipe_path``; the CLI and the tests call exactly this."""
    recipe_path = Path(recipe_path).resolve()
    recipe = load_recipe(recipe_path)
    if only is not None and from_stage is not None:
        raise RecipeError(
            "--only and --from together: --only re-runs one stage, --from re-runs a stage and every later one. "
            "Give one of them."
        )
    only_i, from_i = _select(recipe, only, "--only"), _select(recipe, from_stage, "--from")
    check_chain(recipe, recipe_path.parent)
    check_budget_devices(recipe, recipe_path.parent)
    check_devices(recipe, recipe_path)  # typos, missing runtimes, unreachable boards: before any work
    engine = Engine.create(recipe.train)  # a device this machine lacks is an error before any work
    out_dir = (out or Path("export") / recipe.name).resolve()
    if not engine.is_main:  # rank 0 owns the output folder: its lock, its log, its clean-up
        engine.barrier()
        with recipe_imports(recipe_path):
            return _run(recipe, recipe_path, out_dir, force, only_i, from_i, engine)
    _prepare_out(out_dir)
    with _lock(out_dir), recipe_imports(recipe_path):
        handler = _attach_log(out_dir)
        try:
            _remove_stale(out_dir, keep_checkpoints=not force)
            engine.barrier()
            return _run(recipe, recipe_path, out_dir, force, only_i, from_i, engine)
        except Exception as exc:  # a full disk is not the model's fault, whoever's error reports it
            full = disk_full(exc, out_dir)
            if full is not None:
                raise full from exc
            if isinstance(exc, OSError) and Path(str(exc.filename or "")).is_relative_to(out_dir):
                raise _os_error(exc, out_dir) from exc
            raise
        finally:
            log.removeHandler(handler)
            handler.close()


def _run(
    recipe: Recipe, recipe_path: Path, out_dir: Path, force: bool, only_i: int | None, from_i: int | None,
    engine: Engine,
) -> RunResult:  # fmt: skip
    ctx = Context.of(recipe, recipe_path, out_dir, engine=engine)
    if engine.is_main:
        log.info("%s", engine.summary())
    result = RunResult(out_dir, {})
    artifacts: Artifacts = {}
    history: list[Artifact] = []
    entries: list[tuple[str, dict[str, Any], Any, Any]] = []
    teacher = TeacherConfig(stage="teacher", source=recipe.teacher)
    entries.append(("teacher", teacher.model_dump(exclude_none=True), STAGES.get("teacher").run, teacher))
    for entry in recipe.stages:
        entries.append((entry.stage, entry.model_dump(), STAGES.get(entry.stage).run, entry))
    started = time.perf_counter()
    for pos, (name, cfg, fn, entry) in enumerate(entries):
        index = pos - 1  # position among the recipe's stages; -1 is the teacher
        trains = entry.trains()
        key = _stage_key(cfg, artifacts, ctx, trains)
        folder = out_dir / f"{pos:02d}-{name}-{key[:12]}"
        after_only = only_i is not None and index > only_i  # later stages: loaded if still cached, never run
        must_run = not after_only and (
            force or (only_i is not None and index == only_i) or (from_i is not None and index >= from_i)
        )
        cached = _load_stage(folder, out_dir) if (folder / STAGE_FILE).is_file() and not must_run else None
        if engine.distributed:  # rank 0's answer for every process (a collective: rank 0 is not writing now)
            if not engine.broadcast_object(cached is not None):
                cached = None
            elif cached is None:
                raise StageError(f"stage {pos} ({name}): rank 0 reuses {folder.name}, which this process cannot read.")
        if after_only and cached is None:
            log.info("stage %d %s: not run (--only); later stages are left out of the report", pos, name)
            break
        reuse = cached is not None
        if not reuse and only_i is not None and index < only_i:
            raise StageError(
                f"--only: stage {pos} ({name}) has no cached output for this recipe; run the whole "
                "recipe first (or use --from)."
            )
        t0 = time.perf_counter()
        if cached is not None:
            produced = cached
            log.info("stage %d %s: cached (%s)", pos, name, folder.name)
        else:
            if name != "teacher" and ctx.tokenizer_folder is None and "teacher" in artifacts:
                ctx.tokenizer_folder = artifacts["teacher"].path
            if engine.is_main or trains:
                if engine.is_main:
                    log.info("stage %d %s: running%s", pos, name,
                             f" on {engine.world} processes" if trains and engine.distributed else "")  # fmt: skip
                produced = _run_stage(fn, artifacts, entry, ctx, (pos, name, key, cfg), folder, recipe)
            engine.barrier()  # the stage boundary: rank 0 has written the stage folder
            if not engine.is_main:
                loaded = _load_stage(folder, out_dir)
                if loaded is None:
                    raise StageError(f"stage {pos} ({name}): rank 0 wrote no usable {folder.name}; see its error.")
                produced = loaded
        if name == "teacher":
            ctx.tokenizer_folder = produced["teacher"].path
        seconds = time.perf_counter() - t0
        result.stages.append(StageRecord(pos, name, key, folder.name, reuse, round(seconds, 3)))
        artifacts.update(produced)
        history.extend(produced.values())
        log.info("stage %d %s: %s in %.1fs", pos, name, "loaded" if reuse else "done", seconds)
    result.artifacts = artifacts
    if not engine.is_main:
        return result  # rank 0 writes the report and the manifest, and says whether the budgets were met
    recipe_dict = {"name": recipe.name, "path": str(recipe_path), **recipe.model_dump(mode="json", exclude={"name"})}
    report = build_report(artifacts, recipe_dict, out_dir, history)
    checks = None
    if recipe.budgets:
        formats = device_formats(recipe, recipe_path.parent)
        checks = report["budgets"] = budgets.evaluate(report, recipe.budgets, formats)
        budgets.write_junit(checks, out_dir / "junit.xml", recipe.name)
        budgets.write_github_summary(checks, recipe.name)
    report["headline"] = headline(report)
    write_ship_folders(report, artifacts, out_dir, recipe_path, ctx.data)
    result.report = write_report(report, out_dir)
    _write_manifest(result, recipe_dict, history, time.perf_counter() - started, engine)
    missed = [c for c in checks or [] if not c["passed"]]
    if missed:
        error = BudgetError(
            f"{len(missed)} of {len(checks or [])} budget checks missed (report.md, junit.xml in {out_dir}):\n"
            + "\n".join(f"  {budgets.describe(c)}" for c in missed)
        )
        error.result = result
        raise error
    return result


def _run_stage(
    fn: Any, artifacts: Artifacts, entry: Any, ctx: Context, what: tuple[int, str, str, dict[str, Any]], folder: Path,
    recipe: Recipe,
) -> Artifacts:  # fmt: skip
    """Run one stage into its temporary folder and rename it into place (rank 0); other processes of a training
    stage work in a private folder that is thrown away. Training checkpoints live in the temporary folder's
    `checkpoints/` and survive a failure or a kill, so that a re-run resumes; they go when the stage is done."""
    pos, name, key, cfg = what
    out_dir, engine = ctx.out_dir, ctx.engine
    tmp = out_dir / f".tmp-{folder.name}"
    if engine.is_main:
        if tmp.is_dir() and not tmp.is_symlink():
            for p in tmp.iterdir():
                if p.name != CHECKPOINTS:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        else:
            tmp.unlink(missing_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        ctx.stage_dir = tmp
    else:  # removed when the stage ends; if this process is killed, rank 0's next run removes it as stale
        ctx.stage_dir = out_dir / f".tmp-rank{engine.rank}-{folder.name}"
        shutil.rmtree(ctx.stage_dir, ignore_errors=True)
        ctx.stage_dir.mkdir(parents=True)
    ctx.checkpoints = tmp / CHECKPOINTS
    done = False
    try:
        produced = fn(artifacts, entry, ctx)
        if engine.is_main:
            shutil.rmtree(tmp / CHECKPOINTS, ignore_errors=True)
            produced = _save_stage(tmp, folder, produced, out_dir, {"stage": name, "key": key, "config": cfg})
        done = True
        return produced
    except Interrupted as exc:
        exc.where = f"stage {pos} ({name})"
        raise
    except CompressError:
        raise
    except Exception as exc:  # a library failed on this model: one paragraph here, the traceback in the log
        if disk_full(exc, out_dir) is not None:
            raise
        log.debug("stage %d %s failed", pos, name, exc_info=True)
        raise _library_failure(exc, pos, name, entry, recipe, out_dir) from exc
    finally:
        ctx.checkpoints = None
        if not engine.is_main:
            shutil.rmtree(ctx.stage_dir, ignore_errors=True)
        elif done or not (tmp / CHECKPOINTS).is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:  # keep what a re-run resumes from, nothing else
            for p in tmp.iterdir():
                if p.name != CHECKPOINTS:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_devices(recipe: Recipe, recipe_path: Path) -> list[str]:
    """Resolve and preflight every device of every profile stage (runtime installed, provider present, SSH host
    reachable, adb device attached); returns one line per device."""
    from compress.devices import resolve_device
    from compress.runners import preflight
    from compress.runtimes.base import get_runtime

    found = []
    for i, stage in enumerate(recipe.stages):
        for j, ref in enumerate(stage.measured_devices()):
            key = f"stages[{i}].devices[{j}]"
            try:
                device = resolve_device(ref, recipe_path.parent)
                preflight(device)
                where = "" if device.runner == "local" else f", {device.runner}"
                found.append(f"{key}: {device.name} ({device.runtime} "
                             f"{get_runtime(device.runtime).version()}{where})")  # fmt: skip
            except CompressError as exc:
                raise RecipeError(f"{recipe_path}: {key}: {exc}") from None
    return found


def check_budget_devices(recipe: Recipe, base_dir: Path) -> None:
    """Every device named in `budgets` must be measured by a profile stage, else the budget could never pass;
    a latency limit of a stage (search budget, prune target) needs a device that can be measured here."""
    from compress.devices import resolve_device

    for i, stage in enumerate(recipe.stages):
        stage.preflight(f"stages[{i}]", base_dir)
    if not recipe.budgets:
        return

    profiled = {resolve_device(ref, base_dir).name for s in recipe.stages for ref in s.measured_devices()}
    for device in recipe.budgets:
        if device not in profiled:
            have = ", ".join(sorted(profiled)) or "none"
            raise RecipeError(
                f"budgets.{device}: no profile stage measures this device (profiled: {have}). "
                "Add it to a profile stage's `devices` or fix the name."
            )


def device_formats(recipe: Recipe, base_dir: Path) -> dict[str, str]:
    """Device name -> the artifact format its runtime runs (`onnx`, `executorch`), for every profiled device."""
    from compress.devices import resolve_device
    from compress.runtimes.base import runtime_format

    out = {}
    for stage in recipe.stages:
        for ref in stage.measured_devices():
            device = resolve_device(ref, base_dir)
            out[device.name] = budgets.FORMAT_OF_KIND[runtime_format(device.runtime)]
    return out


def _write_manifest(
    result: RunResult, recipe: dict[str, Any], history: list[Artifact], seconds: float, engine: Engine
) -> None:
    out_dir = result.out_dir
    atomic_write_json(
        out_dir / "manifest.json",
        {
            "compress_version": __version__,
            "recipe": recipe,
            "seconds": round(seconds, 3),
            "stages": [vars(s) for s in result.stages],
            "artifacts": [a.to_json(out_dir) for a in result.artifacts.values()],
            "history": [
                {"name": a.name, "stage": a.stage, "path": a.to_json(out_dir)["path"], "sha256": a.sha256}
                for a in history
            ],
            "environment": environment(),
            "training": engine.describe(),
        },
    )


def validate(recipe_path: Path) -> list[str]:
    """Check the schema and resolve every model, data file and device without training. Returns findings."""
    recipe_path = Path(recipe_path).resolve()
    with recipe_imports(recipe_path):
        return _validate(recipe_path)


def _validate(recipe_path: Path) -> list[str]:
    from compress.models.source import check_architecture, check_hub_id, hf_positions, resolve_hf_path
    from compress.models.task_model import locate_factory

    recipe = load_recipe(recipe_path)
    ctx = Context.of(recipe, recipe_path, Path("."))
    check_budget_devices(recipe, recipe_path.parent)
    check_chain(recipe, recipe_path.parent)
    found = [f"schema: ok ({len(recipe.stages)} stages: {', '.join(s.stage for s in recipe.stages)})"]
    sources = [("teacher", recipe.teacher)] + [
        (f"stages[{i}].student", student)
        for i, s in enumerate(recipe.stages)
        if (student := getattr(s, "student", None)) is not None
    ]
    for where, src in sources:
        if src.hf or src.hf_package:
            path = resolve_hf_path(src, ctx.base_dir)
            if src.hf is not None and path == src.hf:  # a hub id: resolved now, not minutes into the run
                check_hub_id(path, where, src.trust_remote_code)
            check_architecture(path, recipe.data.modality, f"{where}.{'hf' if src.hf else 'hf_package'}",
                               src.trust_remote_code)  # fmt: skip
            remote = " (trust_remote_code: runs the model's own Python code)" if src.trust_remote_code else ""
            found.append(f"{where}: {path}{remote}")
            if where == "teacher":
                family = family_of_source(src, recipe.data.modality, "teacher")
                family.check_positions(recipe.data.max_length, hf_positions(path, src.trust_remote_code))
        elif src.gguf or src.gguf_package:
            from compress.models.gguf import read_header
            from compress.models.source import gguf_path

            key = f"{where}.{'gguf' if src.gguf else 'gguf_package'}"
            header = read_header(gguf_path(src, ctx.base_dir, where), key)
            found.append(f"{where}: GGUF {header.path} ({header.architecture}, {header.layers} layers, "
                         f"{header.tensors} tensors; de-quantized to float32 when loaded)")  # fmt: skip
            if where == "teacher":
                family = family_of_source(src, recipe.data.modality, "teacher")
                family.check_positions(recipe.data.max_length, header.context_length)
        elif src.python:
            code = locate_factory(src.python, src.kwargs)
            found.append(
                f"{where}: python factory {src.python}: `run` imports and runs {code} (a recipe is code: "
                "run only recipes you trust)"
            )
        else:
            found.append(f"{where}: built-in {src.describe()}")
    if recipe.data.modality == "lm":
        from compress.data.dataset import lm_documents

        docs = lm_documents(recipe.data, ctx.base_dir, recipe.seed)
        found.append("data: " + " / ".join(f"{len(docs[k])} {k}" for k in ("train", "dev", "test")) + " documents")
    elif recipe.data.modality == "text":
        n_labels, _ = ctx.label_info()
        found.append(f"data: {recipe.data.format} files readable, columns present, {n_labels} labels")
    else:
        d = ctx.data()
        found.append(f"data: {len(d.train)}/{len(d.dev)}/{len(d.test)} examples, {d.num_labels} labels")
    found.append(f"train: {Engine.create(recipe.train, join=False).summary()}")
    found += check_devices(recipe, recipe_path)
    return found
