"""The adb runner: command construction and the parser of onnxruntime_perf_test's summary; a real run
whenever a device is attached."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from compress.devices import DeviceProfile
from compress.errors import DeviceError
from compress.runners import BenchRequest, measure, preflight
from compress.runners.adb import AdbRunner, parse_perf_test

# The summary lines the parser reads, in onnxruntime_perf_test's wording (values made up for the test).
SUMMARY = """Session creation time cost: 0.0412 s
First inference time cost: 14 ms
Total inference time cost: 0.63 s
Total inference requests: 200
Average inference time cost: 3.15 ms
Total inference run time: 0.631 s
Number of inferences per second: 317.4
Avg CPU usage: 97 %
Peak working set size: 52428800 bytes
Min Latency: 0.00291 s
Max Latency: 0.00512 s
P50 Latency: 0.00309 s
P90 Latency: 0.00344 s
P95 Latency: 0.00371 s
P99 Latency: 0.00455 s
P999 Latency: 0.00512 s
"""


def _device(**adb: object) -> DeviceProfile:
    target = {"binary": "/data/local/tmp/onnxruntime_perf_test", **adb}
    return DeviceProfile.model_validate({"name": "phone", "threads": 4, "cpus": [4, 5, 6, 7], "runner": "adb",
                                         "adb": target})  # fmt: skip


def test_perf_test_summary_is_parsed_in_milliseconds() -> None:
    stats = parse_perf_test(SUMMARY)
    assert stats["p50_ms"] == pytest.approx(3.09) and stats["p90_ms"] == pytest.approx(3.44)
    assert stats["p99_ms"] == pytest.approx(4.55) and stats["min_ms"] == pytest.approx(2.91)
    assert stats["mean_ms"] == pytest.approx(3.15) and stats["cold_start_ms"] == pytest.approx(41.2)
    assert stats["peak_rss_mb"] == pytest.approx(50.0) and stats["runs"] == 200


def test_output_without_latency_is_an_error() -> None:
    with pytest.raises(DeviceError, match="no P50 latency in the benchmark binary's output .*not found"):
        parse_perf_test("CANNOT LINK EXECUTABLE: library libonnxruntime.so not found")


def test_command_construction_pins_cores_and_fills_the_template() -> None:
    runner = AdbRunner(_device(serial="R58M"))
    cmd = runner.bench_command("/data/local/tmp/compress/m0_student.onnx", BenchRequest(runs=50, threads=4,
                                                                                       cpus=(4, 5, 6, 7)))  # fmt: skip
    assert cmd[:4] == ["adb", "-s", "R58M", "shell"]
    assert cmd[4] == ("taskset f0 /data/local/tmp/onnxruntime_perf_test -e cpu -m times -r 50 -x 4 "
                      "/data/local/tmp/compress/m0_student.onnx")  # fmt: skip
    assert AdbRunner(_device()).adb("push", "a", "b") == ["adb", "push", "a", "b"]  # no serial: the only device


def _attached() -> bool:
    if shutil.which("adb") is None:
        return False
    out = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=30).stdout
    return any(line.endswith("\tdevice") for line in out.splitlines())


@pytest.mark.skipif(not _attached(), reason="no Android device attached")
def test_real_device(tmp_path: Path) -> None:  # pragma: no cover - runs where a phone is plugged in
    from tests.runners.test_ssh import _mlp

    device = _device()
    preflight(device)
    stats = measure(device, [_mlp(tmp_path / "mlp.onnx")], runs=20)
    assert stats[0]["p50_ms"] > 0


FAKE_ADB = """#!/bin/sh
# A stand-in for Android's adb on this machine: `shell` runs in sh, `push` copies; the "device" is a folder here.
[ "$1" = "-s" ] && shift 2
case "$1" in
  get-state) echo device ;;
  push) cp "$2" "$3" ;;
  shell) shift; case "$*" in *perf_test*) [ -n "$ADB_HANG" ] && exec sleep 600 ;; esac; exec sh -c "$*" ;;
  *) echo "fake adb: $1 not supported" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def fake_phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`adb` on PATH and a phone's Download folder holding the user's own files."""
    bin_dir, download = tmp_path / "bin", tmp_path / "sdcard" / "Download"
    bin_dir.mkdir()
    download.mkdir(parents=True)
    (bin_dir / "adb").write_text(FAKE_ADB)
    (bin_dir / "adb").chmod(0o755)
    perf = tmp_path / "sdcard" / "onnxruntime_perf_test"
    perf.write_text("#!/bin/sh\ncat <<'EOF'\n" + SUMMARY + "EOF\n")
    perf.chmod(0o755)
    (download / "holiday.jpg").write_bytes(b"the user's photo")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return download


def _phone(download: Path, **adb: object) -> DeviceProfile:
    return _device(binary=str(download.parent / "onnxruntime_perf_test"), workdir=str(download), **adb)


def test_adb_run_works_in_a_fresh_folder_and_removes_only_that(fake_phone: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    device = _phone(fake_phone).model_copy(update={"cpus": None})
    preflight(device)
    stats = measure(device, [model], runs=200)
    assert stats[0]["p50_ms"] == pytest.approx(3.09) and stats[0]["runner"] == "adb"
    assert [p.name for p in fake_phone.iterdir()] == ["holiday.jpg"]  # our folder is gone, the user's file stays
    assert (fake_phone / "holiday.jpg").read_bytes() == b"the user's photo"


def test_adb_that_hangs_is_stopped(fake_phone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    monkeypatch.setenv("ADB_HANG", "1")
    device = _phone(fake_phone, timeout_s=2).model_copy(update={"cpus": None})
    with pytest.raises(DeviceError, match=r"benchmarking m.onnx timed out after 2 s and was stopped"):
        measure(device, [model], runs=5)
    assert [p.name for p in fake_phone.iterdir()] == ["holiday.jpg"]


def test_adb_profile_printed_by_the_cli(fake_phone: Path, tmp_path: Path) -> None:
    """`compress profile` on an adb device: onnxruntime_perf_test reports no std or throughput of its own."""
    from tests.test_cli import cli

    (tmp_path / "phone.yaml").write_text(
        f"name: phone\nrunner: adb\nadb:\n  binary: {fake_phone.parent / 'onnxruntime_perf_test'}\n"
        f"  workdir: {fake_phone}\n"
    )
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx bytes")
    proc = cli("profile", str(model), "--device", str(tmp_path / "phone.yaml"), "--runs", "10")
    assert proc.returncode == 0 and "3.090" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
