"""Device profiles: YAML files in `devices/` (shipped with the package) or a path given by the user."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from compress.errors import DeviceError, RegistryError
from compress.recipe.base import Strict


class SshTarget(Strict):
    """A remote Linux board reached with the system's OpenSSH client (keys and ~/.ssh/config apply)."""

    host: str = Field(..., description="Host name or address.")
    user: str | None = Field(None, description="Login user (default: ssh's own default).")
    port: int = Field(22, gt=0, lt=65536, description="SSH port.")
    identity_file: str | None = Field(None, description="Private key file (default: ssh's own keys / agent).")
    python: str = Field("python3", description="Python on the board, with numpy and the runtime's package.")
    workdir: str = Field("/tmp", description="Folder on the board under which a temporary run folder is made.")
    connect_timeout_s: int = Field(10, gt=0, description="Seconds before an unreachable host is an error.")
    options: list[str] = Field(default_factory=list, description="Extra `-o Key=Value` options for ssh/scp.")


class AdbTarget(Strict):
    """An Android device reached with `adb`; the benchmark binary (e.g. onnxruntime_perf_test) is on it."""

    serial: str | None = Field(None, description="Device serial (`adb devices`); default: the only device.")
    binary: str = Field(..., description="Benchmark binary on the device, e.g. /data/local/tmp/onnxruntime_perf_test.")
    workdir: str = Field("/data/local/tmp/compress", description="Device folder for the pushed model.")
    args: list[str] = Field(
        default_factory=lambda: ["-e", "cpu", "-m", "times", "-r", "{runs}", "-x", "{threads}", "{model}"],
        description="Arguments of the binary; {model}, {runs}, {threads} are filled in. The defaults are "
        "onnxruntime_perf_test's.",
    )


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
    from compress.recipe.yaml_loader import load_yaml

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
