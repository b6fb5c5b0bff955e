"""The SSH runner end to end against a real SSH server on 127.0.0.1: copy, run, fetch, clean up."""

from __future__ import annotations

import getpass
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

from compress.devices import DeviceProfile
from compress.errors import DeviceError
from compress.runners import measure, preflight
from compress.runners.ssh import SshRunner

pytest.importorskip("asyncssh")
pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
NO_HOST_CHECK = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"]


def _device(port: int, key: Path, workdir: Path, **ssh: object) -> DeviceProfile:
    return DeviceProfile.model_validate({
        "name": "test-board", "runtime": "onnxruntime", "threads": 1, "cpus": [0], "runner": "ssh",
        "ssh": {"host": "127.0.0.1", "port": port, "user": getpass.getuser(), "identity_file": str(key),
                "python": sys.executable, "workdir": str(workdir), "connect_timeout_s": 5, "options": NO_HOST_CHECK,
                **ssh},
    })  # fmt: skip


def _mlp(path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    torch.onnx.export(model, (torch.randn(1, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)  # fmt: skip
    return path


def test_ssh_runner_copies_runs_fetches_and_cleans_up(tmp_path: Path) -> None:
    from tests.runners.sshd import LocalSshd

    board = tmp_path / "board"
    board.mkdir()
    model = _mlp(tmp_path / "mlp.onnx")
    with LocalSshd(tmp_path) as server:
        device = _device(server.port, server.client_key, board)
        preflight(device)  # reachable, and the board's Python imports numpy + onnxruntime
        stats = measure(device, [model, model], batch=1, sequence=8, runs=20, warmup=2, top_ops=3)
    assert len(stats) == 2
    for s in stats:
        assert s["runs"] == 20 and 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
        assert s["runner"] == "ssh" and s["threads"] == 1 and s["cpus"] == [0]  # pinned as the profile says
        assert s["runtime"] == "onnxruntime" and s["top_ops"] and "Gemm" in s["top_ops"][0]["op"]  # profiler
    assert not list(board.iterdir())  # the run folder is removed


def test_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    device = _device(port, tmp_path / "missing_key", tmp_path)
    with pytest.raises(DeviceError, match=r"cannot reach .*127.0.0.1 port \d+ over SSH"):
        preflight(device)


def test_missing_runtime_on_the_board_names_the_package(tmp_path: Path) -> None:
    from tests.runners.sshd import LocalSshd

    with LocalSshd(tmp_path) as server:
        device = _device(server.port, server.client_key, tmp_path, python="/bin/false")
        with pytest.raises(DeviceError, match="cannot import numpy and onnxruntime: pip install numpy onnxruntime"):
            preflight(device)


def test_command_construction() -> None:
    device = DeviceProfile.model_validate({
        "name": "pi", "runner": "ssh", "ssh": {"host": "pi.local", "user": "pi", "port": 2222, "options": ["A=b"]},
    })  # fmt: skip
    runner = SshRunner(device)
    cmd = runner.ssh_command("true")
    assert cmd[0] == "ssh" and cmd[-3:] == ["--", "pi@pi.local", "true"] and cmd[-5:-3] == ["-p", "2222"]
    assert "BatchMode=yes" in cmd and "A=b" in cmd


def test_unreachable_board_stops_the_run_before_any_work(tmp_path: Path) -> None:
    from compress import pipeline
    from compress.errors import RecipeError
    from tests.conftest import DIGITS_RECIPE, write_recipe

    board = tmp_path / "board.yaml"
    board.write_text("name: board\nrunner: ssh\nssh: {host: 127.0.0.1, port: 1, connect_timeout_s: 5, "
                     "options: [StrictHostKeyChecking=no, UserKnownHostsFile=/dev/null]}\n")  # fmt: skip
    recipe = write_recipe(tmp_path, DIGITS_RECIPE.replace("devices: [x86-cpu]", "devices: [x86-cpu, board.yaml]"))
    with pytest.raises(RecipeError, match=r"stages\[3\].devices\[1\]: device 'board': cannot reach"):
        pipeline.run(recipe, tmp_path / "out")
    assert not list((tmp_path / "out").glob("0*"))  # no stage ran


def test_board_python_is_quoted_and_hostile_names_never_reach_ssh(tmp_path: Path) -> None:
    """`python`, `host`, `user` and `options` come from a profile a pull request may change: none of them may run
    a command on this machine or chain one on the board."""
    from pydantic import ValidationError

    from tests.runners.sshd import LocalSshd

    board, marker = tmp_path / "board", tmp_path / "pwned"
    board.mkdir()
    with LocalSshd(tmp_path) as server:
        device = _device(server.port, server.client_key, board, python=f"{sys.executable}; touch {marker}")
        with pytest.raises(DeviceError, match="cannot import numpy and onnxruntime"):
            preflight(device)  # the board ran a program named '<python>;', with `touch` as its arguments
    assert not marker.exists()
    hostile = [
        {"host": f"-oProxyCommand=touch {marker}"},
        {"host": "127.0.0.1", "user": f"-oProxyCommand=touch {marker}"},
        {"host": "127.0.0.1", "options": [f"ProxyCommand=touch {marker}"]},
        {"host": "127.0.0.1", "options": ["PermitLocalCommand=yes", f"LocalCommand=touch {marker}"]},
        {"host": "127.0.0.1", "options": [f"proxycommand touch {marker}"]},
        {"host": "127.0.0.1", "options": [f"BatchMode=yes\nProxyCommand touch {marker}"]},
    ]
    for ssh in hostile:
        with pytest.raises(ValidationError):
            DeviceProfile.model_validate({"name": "b", "runner": "ssh", "ssh": ssh})
    assert not marker.exists()
    runner = SshRunner(_device(22, tmp_path / "key", board, user="pi"))
    cmd = runner.ssh_command("true")
    assert cmd[-3:] == ["--", "pi@127.0.0.1", "true"]  # nothing after `--` is read as an ssh option


def test_one_failing_board_keeps_the_other_devices_numbers(tmp_path: Path) -> None:
    """The board answers the pre-flight check, then fails to measure (its work folder is gone): x86-cpu's
    numbers stay in the report, the failure is a flag naming the board, and the run finishes."""
    import yaml

    from compress import pipeline
    from tests.conftest import write_recipe
    from tests.runners.sshd import LocalSshd

    with LocalSshd(tmp_path) as server:
        board = {"name": "flaky-board", "runner": "ssh", "threads": 1, "ssh": {
            "host": "127.0.0.1", "port": server.port, "user": getpass.getuser(),
            "identity_file": str(server.client_key), "python": sys.executable, "workdir": str(tmp_path / "gone"),
            "connect_timeout_s": 5,
            "options": NO_HOST_CHECK}}  # fmt: skip
        (tmp_path / "board.yaml").write_text(yaml.safe_dump(board))
        recipe = write_recipe(tmp_path, """name: two-devices
data: {format: sklearn_digits}
teacher:
  cnn: {widths: [8], block: plain}
stages:
  - stage: finetune
    epochs: 1
  - stage: export
    int8: []
  - stage: profile
    devices: [board.yaml, x86-cpu]
    runs: 5
    warmup: 1
    top_ops: 0
""")
        result = pipeline.run(recipe, tmp_path / "out")
    assert result.artifacts["teacher.onnx"].latency["x86-cpu"]["p50_ms"] > 0
    flags = [f for f in result.report["flags"] if f["kind"] == "profile_failed"]
    assert flags and flags[0]["device"] == "flaky-board" and "creating a run folder" in flags[0]["message"]
