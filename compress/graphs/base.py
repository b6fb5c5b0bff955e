"""The graph a model family deploys its members as, behind one interface.

A family hands stages a `Graph` for each model (`Family.graph`): a logits graph (inputs -> logits: encoders, CNNs,
user models), a KV-cache graph (causal LMs: prefill and cached decoding), or none (bitsandbytes models, which stay
PyTorch). The graph owns everything that depends on that kind of graph: export and its parity check, the
post-training int8 modes that apply, onnxruntime post-training quantization, writing a quantization-aware
trained model, and the evaluation of the written file on its runtime. Stages call it and never ask what kind of
graph a model has, so a new kind (audio or image inputs with other shapes) is a new `Graph`, not a branch in
every stage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from compress.errors import ExportError, QuantizationError

if TYPE_CHECKING:
    from compress.artifacts import Artifact
    from compress.data.dataset import DataBundle
    from compress.evaluation import GenerationCheck, ParityConfig
    from compress.exporters.executorch import ExecuTorchOptions
    from compress.models.task_model import TaskModel
    from compress.quant.ptq import Int8Mode, PtqOptions


@dataclass
class Job:
    """What a stage hands a graph besides the model: the data, the folder artifacts go to, the stage's name, and
    the recipe's teacher (loaded on first use; None when the model is the teacher or there is none). ``memo``
    holds what a graph computes once per stage for every model (a causal LM teacher's picks)."""

    data: DataBundle
    out_dir: Path
    stage: str
    teacher: Callable[[], TaskModel] | None = None
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportOptions:
    """`export`'s settings for one model (``int8``: the variants `Graph.int8_modes` allowed)."""

    opset: int
    int8: list[Int8Mode]
    ptq: PtqOptions
    parity: ParityConfig
    int4: bool
    generation: GenerationCheck
    executorch: ExecuTorchOptions | None
    eval_batch_size: int


@dataclass
class PtqRequest:
    """`quantize: {method: ptq}` for one model: int8 variants, or 4-bit round-to-nearest weights."""

    opset: int
    int8: list[Int8Mode]
    ptq: PtqOptions
    weight_bits: int
    eval_batch_size: int


@dataclass
class QatExport:
    """How a quantization-aware trained model is written: artifact name and precision, weight width, dynamic
    (onnxruntime's dynamic int8 emulated) or trained ranges, and the parity thresholds."""

    source: str
    params: int | None
    name: str
    precision: str
    weight_bits: int
    dynamic: bool
    opset: int
    parity: ParityConfig
    eval_batch_size: int


class Graph(ABC):
    """One kind of deployable graph."""

    name: ClassVar[str]
    exports: ClassVar[bool] = True  # whether the model has an ONNX graph at all

    def int8_modes(self, modes: Sequence[Int8Mode], *, explicit: bool, stage: str, model: str) -> list[Int8Mode]:
        """The int8 variants made of ``modes``: a variant that does not apply to this graph is left out of the
        default list, and refused (naming ``<stage>.int8``) when the recipe lists it (``explicit``). Default: all."""
        return list(modes)

    def check_executorch(self, opts: ExecuTorchOptions, key: str) -> None:
        """Refuse ExecuTorch programs this graph cannot make (``key``: `export.executorch`; default: none)."""
        return None

    def check_qat(self, *, weight_bits: int, dynamic: bool, stage: str) -> None:
        """Refuse a quantization-aware training scheme this graph cannot write (default: every scheme)."""
        return None

    @abstractmethod
    def export(self, model: TaskModel, name: str, params: int | None, job: Job, opts: ExportOptions) -> list[Artifact]:
        """The model's fp32 graph (parity checked), its int8 / low-bit variants and ExecuTorch programs, each with
        its task metric measured on its runtime."""

    @abstractmethod
    def ptq(self, model: TaskModel, source: Artifact, job: Job, req: PtqRequest) -> list[Artifact]:
        """onnxruntime post-training quantization of the model's graph (the quantized artifacts only)."""

    @abstractmethod
    def write_qat(self, student: TaskModel, fp32: TaskModel, job: Job, q: QatExport) -> Artifact:
        """Write a quantization-aware trained model as its integer graph; parity with the fake-quantized model,
        integer kernels checked, the task metric measured on onnxruntime."""


class TorchOnlyGraph(Graph):
    """A model that has no ONNX graph (bitsandbytes weights): export leaves it out, or refuses it when named."""

    name = "bitsandbytes"
    exports = False

    def __init__(self, why: str) -> None:
        self.why = why

    def export(self, model: TaskModel, name: str, params: int | None, job: Job, opts: ExportOptions) -> list[Artifact]:
        raise ExportError(f"export.models: {name!r} {self.why}, which does not export to ONNX.")

    def ptq(self, model: TaskModel, source: Artifact, job: Job, req: PtqRequest) -> list[Artifact]:
        raise QuantizationError(f"quantize.source {source.name!r} {self.why}; onnxruntime cannot quantize it.")

    def write_qat(self, student: TaskModel, fp32: TaskModel, job: Job, q: QatExport) -> Artifact:
        raise QuantizationError(f"quantize.source {q.source!r} {self.why}; it has no graph to write.")
