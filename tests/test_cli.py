"""The CLI driven as a user would: a real subprocess of `python -m compress`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compress.devices import resolve_device
from compress.errors import DeviceError, RegistryError
from compress.recipe.docs import render

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=cwd)


def test_version_devices_and_schema() -> None:
    assert cli("--version").stdout.startswith("compress ")
    devices = cli("devices")  # what was asked for goes to stdout: `compress devices | grep openvino` finds it
    assert devices.returncode == 0 and "x86-cpu" in devices.stdout and "yes" in devices.stdout
    assert any("openvino" in line for line in devices.stdout.splitlines()) and "x86-cpu" not in devices.stderr
    listed = {d["device"]: d for d in json.loads(cli("devices", "--json").stdout)}
    assert listed["x86-cpu"]["can_run_here"] is True and listed["x86-cpu"]["runtime"] == "onnxruntime"
    schema = json.loads(cli("schema").stdout)
    assert schema["additionalProperties"] is False and "stages" in schema["properties"]


def test_docs_page_is_generated_from_the_current_schema() -> None:
    assert (ROOT / "docs" / "recipe.md").read_text() == render(), "run: compress schema --markdown > docs/recipe.md"


def test_run_then_profile_an_artifact(tmp_path: Path) -> None:
    from tests.conftest import DIGITS_RECIPE

    (tmp_path / "r.yaml").write_text(DIGITS_RECIPE.replace("epochs: 3", "epochs: 1"))
    run = cli("run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert "student.int8-static.onnx" in run.stdout and "ship " in run.stdout  # the table and the headline
    assert "stage 1 finetune" in run.stderr and "stage 1 finetune" not in run.stdout  # logs stay on stderr
    again = json.loads(cli("run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--json").stdout)
    assert again["headline"][0]["device"] == "x86-cpu" and "student.onnx" in again["artifacts"]
    assert (tmp_path / "out" / again["ship"]["x86-cpu"] / "README.md").is_file()
    checks = json.loads(cli("validate", str(tmp_path / "r.yaml"), "--json").stdout)
    assert checks["ok"] and any("x86-cpu" in c for c in checks["checks"])
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "manifest.json").is_file()
    onnx = next((tmp_path / "out").glob("*export*/student.onnx"))
    prof = cli("profile", str(onnx), "--device", "x86-cpu", "--runs", "5", "--warmup", "1", "--json")
    stats = json.loads(prof.stdout)["x86-cpu"]
    assert stats["runs"] == 5 and stats["p50_ms"] > 0 and stats["runtime"] == "onnxruntime"
    missing = cli("profile", str(tmp_path / "nope.onnx"), "--device", "x86-cpu")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_device_profiles_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="Did you mean 'x86-cpu'"):
        resolve_device("x86_cpu")
    bad = tmp_path / "board.yaml"
    bad.write_text("name: board\nthread: 4\n")
    with pytest.raises(
        DeviceError, match=r"board.yaml: thread: Extra inputs are not permitted. Did you mean 'threads'"
    ):
        resolve_device(str(bad))
    assert resolve_device("x86-cpu").threads == 2


def test_profile_options_out_of_range_name_the_option(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    for option in ("--runs", "--batch", "--sequence"):
        proc = cli("profile", str(model), "--device", "x86-cpu", option, "0")
        assert proc.returncode == 2 and option in proc.stderr and "Traceback" not in proc.stderr


def test_billion_laughs_is_refused_quickly_by_validate() -> None:
    """A few hundred bytes that a safe YAML loader alone expands to 10^9 strings: refused in well under a second
    of parsing, with the file and line, instead of exhausting the memory of the CI job that validates a PR."""
    path = ROOT / "tests" / "recipe" / "invalid" / "alias_bomb.yaml"
    proc = subprocess.run([sys.executable, "-m", "compress", "validate", str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "expands to more than 100,000 values" in proc.stderr
    assert "alias_bomb.yaml:" in proc.stderr and "Traceback" not in proc.stderr
