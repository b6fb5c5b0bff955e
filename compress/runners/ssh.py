"""A remote Linux board over SSH: copy the artifacts and the self-contained benchmark script into a temporary
folder on the board, run it with the profile's threads and CPUs, fetch its JSON, remove the folder.

The system's OpenSSH client does the work, so keys, agents and ~/.ssh/config behave as they do for the user;
`BatchMode=yes` makes a missing key an error instead of a password prompt. Files travel through the SSH
session itself (`cat > file` on the board), not scp/SFTP: boards running dropbear or without sftp-server work
the same, and there is one tool to get right."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from compress.devices import DeviceProfile, SshTarget
from compress.errors import DeviceError
from compress.runners.base import BENCH_SCRIPT, BenchRequest, last_line, run_child

# the board's Python must import these for each runtime
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class SshRunner:
    def __init__(self, device: DeviceProfile) -> None:
        assert device.ssh is not None  # the profile's validator guarantees it
        self.device, self.target = device, device.ssh

    # ---- command construction (tested without a network) ----------------------------------------------------
    def options(self) -> list[str]:
        t: SshTarget = self.target
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={t.connect_timeout_s}"]
        if t.identity_file:
            opts += ["-i", os.path.expanduser(t.identity_file)]
        for opt in t.options:
            opts += ["-o", opt]
        return opts

    @property
    def destination(self) -> str:
        return f"{self.target.user}@{self.target.host}" if self.target.user else self.target.host

    def ssh_command(self, remote: str) -> list[str]:
        return ["ssh", *self.options(), "-p", str(self.target.port), "--", self.destination, remote]

    # ---- running ---------------------------------------------------------------------------------------------
    def _call(self, cmd: list[str], what: str, timeout: float = 3600, stdin: Path | None = None) -> str:
        if shutil.which(cmd[0]) is None:
            raise DeviceError(f"device {self.device.name!r}: the `{cmd[0]}` client is not installed (OpenSSH).")
        with open(stdin, "rb") if stdin else contextlib.nullcontext() as fh:
            proc = run_child(cmd, what=what, device=self.device.name, timeout=timeout, stdin=fh)
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if proc.returncode == 255:
            raise DeviceError(
                f"device {self.device.name!r}: cannot reach {self.destination} port {self.target.port} over SSH "
                f"({last_line(err)}). Check the host, the port and that your key is accepted."
            )
        if proc.returncode != 0:
            raise DeviceError(f"device {self.device.name!r}: {what} failed on {self.destination}: "
                              f"{last_line(err or out)}")  # fmt: skip
        return out

    def push(self, local: Path, remote: str) -> None:
        self._call(self.ssh_command(f"cat > {shlex.quote(remote)}"), f"copying {local.name}", stdin=local)

    def check(self) -> None:
        package = RUNTIME_PACKAGES.get(self.device.runtime)
        if package is None:
            raise DeviceError(f"device {self.device.name!r}: runtime {self.device.runtime!r} cannot run over SSH "
                              f"(supported: {', '.join(RUNTIME_PACKAGES)}).")  # fmt: skip
        probe = f"{self.target.python_command()} -c {shlex.quote(f'import numpy, {package}')}"
        timeout = self.target.connect_timeout_s + 30
        try:
            self._call(self.ssh_command(probe), "checking the board's Python", timeout=timeout)
        except DeviceError as exc:
            if "cannot reach" in str(exc):
                raise
            raise DeviceError(
                f"device {self.device.name!r}: `{self.target.python}` on {self.destination} cannot "
                f"import numpy and {package}: pip install numpy {package} on the board."
            ) from None

    def run(self, paths: list[Path], request: BenchRequest) -> list[dict[str, Any]]:
        unique = list(dict.fromkeys(p.resolve() for p in paths))  # several rounds may repeat a file
        remote_name = {p: f"m{i}_{p.name}" for i, p in enumerate(unique)}
        workdir = shlex.quote(self.target.workdir.rstrip("/") or "/")
        folder = self._call(self.ssh_command(f"mktemp -d {workdir}/compress-XXXXXX"), "creating a run folder").strip()
        if not folder.startswith(f"{self.target.workdir.rstrip('/')}/compress-") or "\n" in folder:
            raise DeviceError(f"device {self.device.name!r}: mktemp printed {folder!r}, not a new folder under "
                              f"{self.target.workdir} on {self.destination}.")  # fmt: skip
        try:
            self.push(BENCH_SCRIPT, f"{folder}/bench.py")
            for path, name in remote_name.items():
                self.push(path, f"{folder}/{name}")
            argv = request.argv([remote_name[p.resolve()] for p in paths], "result.json")
            remote = f"cd {shlex.quote(folder)} && {self.target.python_command()} bench.py {shlex.join(argv)}"
            self._call(self.ssh_command(remote), "the benchmark")
            text = self._call(self.ssh_command(f"cat {shlex.quote(folder)}/result.json"), "fetching the results")
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                raise DeviceError(f"device {self.device.name!r}: the results are not JSON: {last_line(text)}") from None
        finally:
            with contextlib.suppress(DeviceError):  # best effort; the benchmark's own error matters more
                self._call(self.ssh_command(f"rm -rf {shlex.quote(folder)}"), "cleaning up", timeout=60)
        return data if isinstance(data, list) else [data]
