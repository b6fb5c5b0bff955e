"""Faults around a run: output folders that cannot be used, two runs into one folder, leftovers of killed runs,
a tampered cache, a planted symlink, a full disk, Ctrl-C and SIGTERM (with a benchmark child running)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from compress import pipeline
from compress.errors import OutputError
from compress.fileio import sha256_path
from tests.conftest import ROOT, write_recipe

QUICK = """name: quick
seed: 0
data: {format: sklearn_digits}
teacher:
  cnn: {widths: [8], block: plain}
stages:
  - stage: finetune
    epochs: 1
    batch_size: 64
"""

# long enough to be interrupted mid-stage, short enough to finish if a signal were ignored
SLOW = QUICK.replace("epochs: 1", "epochs: 200")

PROFILED = (
    QUICK
    + """  - stage: export
    int8: []
  - stage: profile
    devices: [x86-cpu]
    seconds: 120
    top_ops: 0
"""
)


def _start(recipe: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "compress", "run", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def _wait_for(predicate, seconds: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def _log_says(out: Path, text: str) -> bool:
    log = out / "compress.log"
    return log.is_file() and text in log.read_text()


def test_output_folder_that_is_a_file_or_too_long_is_a_clear_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, QUICK)
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        pipeline.run(recipe, tmp_path / "afile")
    with pytest.raises(OutputError, match="Not a directory"):
        pipeline.run(recipe, tmp_path / "afile" / "sub")
    with pytest.raises(OutputError, match="File name too long"):
        pipeline.run(recipe, tmp_path / ("x" * 300))
    assert (tmp_path / "afile").read_text() == "mine"


def test_read_only_output_folder_is_a_clear_error(tmp_path: Path) -> None:
    target = Path("/proc/compress-out")  # a read-only file system even for root
    if os.access("/proc", os.W_OK) and not os.path.ismount("/proc"):
        pytest.skip("no read-only file system here")
    with pytest.raises(OutputError, match="compress-out: cannot write"):
        pipeline.run(write_recipe(tmp_path, QUICK), target)


def test_second_run_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("a+") as held:  # what a running `compress run` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 since now")
        held.flush()
        with pytest.raises(OutputError, match=r"in use by another compress run \(pid 4242"):
            pipeline.run(write_recipe(tmp_path, QUICK), out)
    assert not list(out.glob("00-teacher-*"))  # refused before any work


def test_leftovers_of_a_killed_run_are_removed_and_a_planted_log_link_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stale = [out / ".tmp-01-finetune-0123456789ab-999", out / ".cache" / "teacher-logits" / ".k.999.tmp"]
    stale[0].mkdir(parents=True)
    (stale[0] / "weights").write_bytes(b"half")
    stale[1].parent.mkdir(parents=True)
    stale[1].write_bytes(b"half")
    recipe = write_recipe(tmp_path, QUICK)
    pipeline.run(recipe, out)
    assert not any(p.exists() for p in stale)

    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    (out / "compress.log").unlink()
    (out / "compress.log").symlink_to(precious)
    with pytest.raises(OutputError, match="compress.log is a symbolic link"):
        pipeline.run(recipe, out)
    assert precious.read_text() == "keep"


def test_a_changed_cached_artifact_is_rebuilt(tmp_path: Path) -> None:
    recipe, out = write_recipe(tmp_path, QUICK), tmp_path / "out"
    first = pipeline.run(recipe, out)
    model = first.artifacts["teacher"].path / "model.safetensors"
    assert first.artifacts["teacher"].stage == "finetune"
    original = sha256_path(model)
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the trained weights
    model.write_bytes(bytes(data))
    second = pipeline.run(recipe, out)
    finetune = [s for s in second.stages if s.stage == "finetune"][0]
    assert not finetune.cached  # re-verified, found changed, rebuilt
    assert sha256_path(second.artifacts["teacher"].path / "model.safetensors") == original  # seeded: identical
    assert all(s.cached for s in pipeline.run(recipe, out).stages)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_cleanly_and_says_how_to_resume(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    out = tmp_path / "out"
    proc = _start(write_recipe(tmp_path, SLOW), out)
    _wait_for(lambda: _log_says(out, "stage 1 finetune: running"))
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted by {sig.name} during stage 1 (finetune)" in err and "run the same command again" in err
    assert "Traceback" not in err
    for tmp in out.glob(".tmp-*"):  # the half-finished stage folder is gone, but for what a re-run resumes from
        assert [p.name for p in tmp.iterdir()] == ["checkpoints"]
    assert not list(out.glob("01-finetune-*"))
    assert list(out.glob("00-teacher-*/stage.json"))  # the finished stage stays cached


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_killed_run_leaves_no_benchmark_process(tmp_path: Path, how: str) -> None:
    out = tmp_path / "out"
    proc = _start(write_recipe(tmp_path, PROFILED), out)
    parent = psutil.Process(proc.pid)

    def bench() -> list[psutil.Process]:
        try:
            return [c for c in parent.children(recursive=True) if "bench.py" in " ".join(c.cmdline())]
        except psutil.Error:
            return []

    _wait_for(lambda: bool(bench()), seconds=180)
    children = bench()
    proc.send_signal(getattr(signal, how))
    proc.communicate(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"benchmark process outlived compress after {how}"


def test_full_disk_names_the_disk_not_the_model(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        recipe = write_recipe(tmp_path, QUICK.replace("widths: [8], block: plain", "widths: [256, 256], block: resnet"))
        proc = subprocess.run([sys.executable, "-m", "compress", "run", str(recipe), "--out", str(disk / "out")],
                              capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "the disk is full" in proc.stderr and str(disk / "out") in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not list((disk / "out").glob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_output_names_that_are_paths_write_nothing_outside_the_output_folder(tmp_path: Path) -> None:
    from compress.errors import RecipeError

    work = tmp_path / "work"
    work.mkdir()
    for stage in ("distill", "prune", "search", "moefy"):
        method = "    method: diswot\n" if stage == "search" else ""  # search has no default method
        recipe = write_recipe(work, QUICK + f"  - stage: {stage}\n{method}    output: ../../escaped\n", f"{stage}.yaml")
        with pytest.raises(RecipeError, match=r"stages\[1\].output: '../../escaped': use letters"):
            pipeline.run(recipe, work / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["distill.yaml", "moefy.yaml", "prune.yaml", "search.yaml"]


def test_files_of_a_run_share_one_permission_mode(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pipeline.run(write_recipe(tmp_path, QUICK), out)
    modes = {f.relative_to(out).as_posix(): f.stat().st_mode & 0o777 for f in out.rglob("*") if f.is_file()}
    assert len(set(modes.values())) == 1, modes
