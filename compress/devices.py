"""Device profiles: YAML files in `devices/` (shipped with the package) or a path given by the user."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from compress.errors import DeviceError, RegistryError
from compress.recipe.base import Strict


class DeviceProfile(Strict):
    """Where and how a model is measured."""

    name: str = Field(..., description="Device name used in recipes and reports.")
    description: str = Field("", description="What this device is.")
    runtime: str = Field("onnxruntime", description="Runtime that runs the model (see `compress devices`).")
    provider: str | None = Field("CPUExecutionProvider", description="Execution provider of the runtime.")
    threads: int | None = Field(None, gt=0, description="Intra-op threads (null: all cores).")
    runner: Literal["local"] = Field("local", description="Where the benchmark runs.")


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
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DeviceError(f"device profile {path} is not valid YAML: {exc}") from None
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
        raise DeviceError(f"device profile {path}: {key}: {err['msg']}.{hint}") from None


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
