"""Artifacts: small typed handles on what a stage produced (a model folder or an ONNX file) plus metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from compress.fileio import sha256_path, size_of

Kind = Literal["model", "onnx", "pte"]  # pte: an ExecuTorch program


@dataclass
class Artifact:
    """``name`` is the handle later stages use ("teacher", "student", "student.int8-dynamic.onnx")."""

    name: str
    kind: Kind
    path: Path
    stage: str
    parent: str | None = None
    precision: str = "fp32"
    params: int | None = None
    size_bytes: int = 0
    sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def finalize(self) -> Artifact:
        """Record size and content hash once the files are complete."""
        self.size_bytes = size_of(self.path)
        self.sha256 = sha256_path(self.path)
        return self

    @property
    def format(self) -> str:
        return {"onnx": "onnx", "pte": "executorch"}.get(self.kind, "pytorch")

    def to_json(self, out_dir: Path) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = (
            self.path.relative_to(out_dir).as_posix() if self.path.is_relative_to(out_dir) else str(self.path)
        )
        data["format"] = self.format
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], out_dir: Path) -> Artifact:
        data = {k: v for k, v in data.items() if k != "format"}
        path = Path(data.pop("path"))
        return cls(path=path if path.is_absolute() else out_dir / path, **data)


Artifacts = dict[str, Artifact]
