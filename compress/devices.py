"""Device profiles: YAML files in `devices/` (shipped with the package) or a path given by the user."""

from __future__ import annotations

import difflib
import re
import shlex
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from compress.config import Strict
from compress.errors import DeviceError, RegistryError

SSH_HOST = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9._:%\[\]-]*")
SSH_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9._-]*")
SSH_OPTION_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*")
SSH_FORBIDDEN = ("ProxyCommand", "LocalCommand", "PermitLocalCommand", "KnownHostsCommand", "Match", "Include",
                 "PKCS11Provider", "SecurityKeyProvider", "ProxyUseFdpass", "RemoteCommand", "ControlMaster",
                 "ControlPath", "SetEnv", "SendEnv")  # fmt: skip


class SshTarget(Strict):
    """A remote Linux board reached with the system's OpenSSH client (keys and ~/.ssh/config apply)."""

    host: str = Field(..., description="Host name or address.")
    user: str | None = Field(None, description="Login user (default: ssh's own default).")
    port: int = Field(22, gt=0, lt=65536, description="SSH port.")
    identity_file: str | None = Field(None, description="Private key file (default: ssh's own keys / agent).")
    python: str = Field("python3", description="Python on the board, with numpy and the runtime's package.")
    workdir: str = Field("/tmp", description="Folder on the board under which a temporary run folder is made.")
    connect_timeout_s: int = Field(10, gt=0, description="Seconds before an unreachable host is an error.")
    options: list[str] = Field(
        default_factory=list,
        description="Extra `-o Key=Value` options for ssh. Options that run local commands or load local code "
        f"({', '.join(SSH_FORBIDDEN)}) are refused: `compress validate` connects to check the board.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not SSH_HOST.fullmatch(v):
            raise ValueError(f"{v!r} is not a host name or address (letters, digits, '.', '-', ':', not starting "
                             "with '-')")  # fmt: skip
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not SSH_USER.fullmatch(v):
            raise ValueError(f"{v!r} is not a login name (letters, digits, '.', '_', '-', not starting with '-')")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for opt in v:
            key, sep, value = opt.replace("=", " ", 1).partition(" ")
            if not sep or not SSH_OPTION_KEY.fullmatch(key) or not value.strip() or any(c in opt for c in "\n\r\0"):
                raise ValueError(f"{opt!r} is not an ssh option of the form Key=Value")
            if key.lower() in {k.lower() for k in SSH_FORBIDDEN}:
                raise ValueError(f"{key} runs a local command or loads local code; it is refused (see `options`)")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        try:
            words = shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"{v!r}: {exc}") from None
        if not words:
            raise ValueError("give the board's Python command, e.g. python3")
        return v

    def python_command(self) -> str:
        """`python` for the board's shell, each word quoted: nothing in it can chain another command."""
        return shlex.join(shlex.split(self.python))


ADB_PLACEHOLDERS = ("model", "runs", "threads")


class AdbTarget(Strict):
    """An Android device reached with `adb`; the benchmark binary (e.g. onnxruntime_perf_test) is on it."""

    serial: str | None = Field(None, description="Device serial (`adb devices`); default: the only device.")
    binary: str = Field(..., description="Benchmark binary on the device, e.g. /data/local/tmp/onnxruntime_perf_test.")
    workdir: str = Field(
        "/data/local/tmp",
        description="Device folder under which each run makes (and afterwards removes) a fresh `compress-XXXXXX` "
        "folder for the pushed models; nothing else in it is touched.",
    )
    args: list[str] = Field(
        default_factory=lambda: ["-e", "cpu", "-m", "times", "-r", "{runs}", "-x", "{threads}", "{model}"],
        description="Arguments of the binary; {model}, {runs}, {threads} are filled in (write {{ and }} for "
        "literal braces). The defaults are onnxruntime_perf_test's.",
    )
    timeout_s: int = Field(
        600, gt=0, le=86400, description="Seconds one adb command (push, benchmark) may take before it is stopped."
    )

    @field_validator("args")
    @classmethod
    def _placeholders(cls, v: list[str]) -> list[str]:
        for arg in v:
            try:
                fields = [name for _, name, spec, conv in string.Formatter().parse(arg) if name is not None]
            except ValueError as exc:
                raise ValueError(f"argument {arg!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
            unknown = [f for f in fields if f not in ADB_PLACEHOLDERS]
            if unknown:
                raise ValueError(
                    f"argument {arg!r} has the placeholder {{{unknown[0]}}}; known: "
                    f"{', '.join('{' + p + '}' for p in ADB_PLACEHOLDERS)}"
                )
        return v


class DeviceProfile(Strict):
    """Where and how a model is measured."""

    name: str = Field(..., description="Device name used in recipes and reports.")
    description: str = Field("", description="What this device is.")
    runtime: str = Field("onnxruntime", description="Runtime that runs the model (see `compress devices`).")
    provider: str | None = Field(
        "CPUExecutionProvider", description="onnxruntime execution provider, or OpenVINO device (CPU, GPU)."
    )
    threads: int | None = Field(None, gt=0, description="Intra-op threads (null: all cores).")
    cpus: list[int] | None = Field(
        None, description="Pin the benchmark process to these CPU cores (Linux; e.g. the big cores of a board)."
    )
    runner: Literal["local", "ssh", "adb"] = Field("local", description="Where the benchmark runs.")
    ssh: SshTarget | None = Field(None, description="The board, for `runner: ssh`.")
    adb: AdbTarget | None = Field(None, description="The Android device, for `runner: adb`.")

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("give at least one core, or remove `cpus` to use them all")
            bad = [c for c in v if not 0 <= c < 4096]
            if bad:
                raise ValueError(f"core {bad[0]} is not a CPU index (0, 1, 2, ...)")
            if len(set(v)) != len(v):
                raise ValueError("a core is listed twice")
        return v

    @model_validator(mode="after")
    def _runner_target(self) -> DeviceProfile:
        for runner in ("ssh", "adb"):
            if self.runner == runner and getattr(self, runner) is None:
                raise ValueError(f"runner: {runner} needs an `{runner}:` block")
            if self.runner != runner and getattr(self, runner) is not None:
                raise ValueError(f"{runner}: given but runner is {self.runner!r}")
        return self


def devices_dir() -> Path:
    """`compress/devices` inside an installed wheel, else the repository's `devices/` folder."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "devices", here.parent / "devices"):
        if candidate.is_dir():
            return candidate
    return here / "devices"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in devices_dir().glob("*.yaml"))


def load_profile_file(path: Path) -> DeviceProfile:
    from compress.safe_yaml import load_yaml

    data, _ = load_yaml(path, "device profile", DeviceError)
    if not isinstance(data, dict):
        raise DeviceError(f"device profile {path} must be a mapping of keys (name, runtime, provider, threads).")
    data.setdefault("name", path.stem)
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        hint = ""
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(DeviceProfile.model_fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = f"{key}: " if key else ""
        raise DeviceError(f"device profile {path}: {where}{msg}.{hint}") from None


def resolve_device(ref: str, base_dir: Path | None = None) -> DeviceProfile:
    """A built-in profile name (`x86-cpu`) or a path to a profile YAML file."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = (base_dir / ref) if base_dir and not Path(ref).is_absolute() else Path(ref)
        if not path.is_file():
            raise DeviceError(f"device profile file {path} does not exist.")
        return load_profile_file(path)
    path = devices_dir() / f"{ref}.yaml"
    if not path.is_file():
        names = builtin_names()
        close = difflib.get_close_matches(ref, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown device {ref!r}.{hint} Known: {', '.join(names)} (or a path to a profile YAML).")
    return load_profile_file(path)
