"""Methods registered per family: a method a family supports is an implementation registered for that
(method, family) pair and the source kinds it runs on, so "supported" means "has an implementation".

A `Method` names what a stage may ask for (`prune:dphubert`, `moefy`, ...) and, as its type parameter, what its
implementation is: the function or object the stage calls (DPHuBERT's masked groups, the FFN blocks LaDiMo
splits, a search space and its students). Methods that generic code runs on any member whose structure allows it
(attention losses, QAT, export) register the generic code's switch, ``True``: the registration says for which
source kinds that structure is there, and the family test matrix runs every registered pair.

`Family.supports`, `Family.method` and `validate` all read this one table: a recipe asking for a pair with no
registration is refused before any work, naming the family, the method and the methods that do apply.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from compress.data.dataset import DataBundle
    from compress.devices import DeviceProfile
    from compress.losses import LossConfig
    from compress.models.task_model import TaskModel
    from compress.moe.experts import FfnBlock
    from compress.pruning.latency_costs import LatencyCosts
    from compress.pruning.masked import MaskedGroups, PruneGoal
    from compress.search.space import Arch, Space
    from compress.search.supernet import SlicedSuperNet

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)  # a method whose implementation does more is still the method

METHODS: dict[str, Method[Any]] = {}


@dataclass(frozen=True, eq=False)
class Method(Generic[T_co]):
    """A method a stage may ask a family for; ``words`` says what it is in errors and `compress families`."""

    name: str
    words: str

    def __post_init__(self) -> None:
        METHODS[self.name] = self


@dataclass(frozen=True)
class Registration:
    kinds: tuple[str, ...]
    impl: Any
    architectures: tuple[str, ...] | None = None  # the Hugging Face model types of `hf` members it runs on (None: any)


_TABLE: dict[tuple[str, str], Registration] = {}


def register(
    method: Method[T], family: str, kinds: tuple[str, ...], impl: T, *, architectures: tuple[str, ...] | None = None
) -> None:
    """Register ``impl`` as ``method`` for members of ``family`` built from these source kinds; ``architectures``
    limits its Hugging Face members to these model types (the structure the implementation reads)."""
    if (method.name, family) in _TABLE:
        raise ValueError(f"{method.name} is already registered for the {family} family")
    _TABLE[method.name, family] = Registration(tuple(kinds), impl, architectures)


def kinds_of(method: str, family: str) -> tuple[str, ...]:
    """The source kinds of ``family`` that have an implementation of ``method`` (none: not registered)."""
    entry = _TABLE.get((method, family))
    return entry.kinds if entry is not None else ()


def architectures_of(method: str, family: str) -> tuple[str, ...] | None:
    """The Hugging Face model types ``method`` is registered for in ``family`` (None: any)."""
    entry = _TABLE.get((method, family))
    return entry.architectures if entry is not None else None


def runs_on(method: str, family: str, kind: str | None, architecture: str | None = None) -> bool:
    """Whether ``method`` has an implementation for members of ``family`` of source ``kind`` (any kind when None)
    and, for Hugging Face members, of this model type (an unknown type, None, is not refused here: loading it
    says what it is)."""
    entry = _TABLE.get((method, family))
    if entry is None or (kind is not None and kind not in entry.kinds):
        return False
    known = kind == "hf" and architecture is not None and entry.architectures is not None
    return not known or architecture in entry.architectures  # type: ignore[operator]


def implementation(method: Method[T], family: str, kind: str | None, architecture: str | None = None) -> T | None:
    """The implementation of ``method`` for members of ``family`` of source ``kind`` (any kind when None) and
    Hugging Face model type ``architecture``."""
    if not runs_on(method.name, family, kind, architecture):
        return None
    return _TABLE[method.name, family].impl  # type: ignore[no-any-return]


def registered(family: str) -> dict[str, tuple[str, ...]]:
    """Every method registered for ``family``, with its source kinds, in the order `METHODS` lists them."""
    return {name: _TABLE[name, family].kinds for name in METHODS if (name, family) in _TABLE}


# ---- what each method's implementation is ---------------------------------------------------------------------
class MaskedGroupsFn(Protocol):
    def __call__(self, model: TaskModel, goal: PruneGoal, where: str, data: DataBundle) -> MaskedGroups:
        """DPHuBERT's prunable groups with their hard-concrete masks, sized against ``goal``."""


class LatencyCostsFn(Protocol):
    def __call__(self, model: TaskModel, device: DeviceProfile, sequence: int, cache_dir: Path, *, precision: str,
                 statistic: str, reference: tuple[DeviceProfile, Path] | None = None) -> LatencyCosts:  # fmt: skip
        """The ms each of DPHuBERT's groups costs on ``device``, timed as deployed (``reference``: a teacher
        graph timed in the same rounds, for a speed-up target)."""


class FfnBlocksFn(Protocol):
    def __call__(self, model: TaskModel, where: str) -> list[FfnBlock]:
        """The FFN blocks `moefy` turns into experts."""


class BitsandbytesCheck(Protocol):
    def __call__(self, model: TaskModel, where: str) -> None:
        """Refuse a model that bitsandbytes cannot reload quantized."""


class LayerStructure(ABC):
    """Layer-to-layer structure: what the `hidden` loss and DPHuBERT's L1 + cosine terms pair up."""

    student_key: str  # the built-in student spec (`bert`, `decoder`) whose `init_from_layers` says where it came from

    @abstractmethod
    def layers(self, model: TaskModel) -> int: ...

    @abstractmethod
    def width(self, model: TaskModel) -> int:
        """The hidden size of the layer outputs."""

    def default_map(self, student: TaskModel, teacher: TaskModel) -> list[int]:
        """The teacher layer each student layer matches by default: the same layer when the depths are equal, the
        layers a built-in student was sliced from, else evenly spaced teacher layers."""
        from compress.models.layer_map import evenly_spaced

        s_layers, t_layers = self.layers(student), self.layers(teacher)
        if s_layers == t_layers:
            return list(range(s_layers))
        init = (student.spec.get(self.student_key) or {}).get("init_from_layers")
        return list(init) if init and len(init) == s_layers else evenly_spaced(s_layers, t_layers)


class ChannelPruning(ABC):
    """What torch-pruning's dependency graph needs of a member."""

    @abstractmethod
    def example_input(self, data: DataBundle) -> torch.Tensor:
        """One example as the single tensor the tracer takes."""

    @abstractmethod
    def reference(self, model: TaskModel) -> nn.Module:
        """A fresh, unchanged build of the model (what structural changes are recorded against)."""


class Searcher(ABC):
    """A search method's pieces for one family: its space, candidates and the student a searched arch becomes."""

    @abstractmethod
    def space(self, space: Space | None, teacher: TaskModel, where: str) -> Space:
        """The search space (the recipe's, checked against the teacher, or the family's default)."""

    def candidate(self, space: Space, arch: Arch, teacher: TaskModel, *, in_channels: int | None,
                  seed: int) -> TaskModel:  # fmt: skip
        """A randomly initialised candidate of the arch (costs and DisWOT scores), seeded by ``seed``."""
        from compress.search.candidates import build_candidate

        return build_candidate(space, arch, teacher, in_channels=in_channels, seed=seed)

    @abstractmethod
    def student(self, space: Space, arch: Arch, teacher: TaskModel, data: DataBundle, seed: int,
                supernet: Any = None) -> TaskModel:  # fmt: skip
        """The student a searched arch becomes (``supernet``: AutoDistil's trained weights, when there are)."""

    def input_shape(self, data: DataBundle) -> tuple[int, ...] | None:
        """The per-example input shape that sizes cost counts and latency tables (None: token sequences)."""
        return None


class SupernetSearcher(Searcher):
    """AutoDistil's pieces: a searcher with a weight-sharing super-network over the teacher."""

    @abstractmethod
    def supernet(self, teacher: TaskModel) -> SlicedSuperNet: ...


class QatDefaults:
    """What quantization-aware training takes from the family when the recipe does not say (as it is: the
    defaults for any family)."""

    weight_bits: tuple[int, ...] = (8, 4)  # the weight widths it trains; the first is the default

    def __init__(self, family: str) -> None:
        self.family = family  # the family registering these defaults, as errors name it

    def weight_width(self, bits: int | None, *, where: str, source: str) -> int:
        """The weight width to train: the default when the recipe names none (``bits`` None), else ``bits`` when the
        family trains it; a clear error naming ``where`` otherwise."""
        if bits is None:
            return self.weight_bits[0]
        if bits not in self.weight_bits:
            from compress.errors import QuantizationError

            raise QuantizationError(
                f"{where}: {bits}-bit QAT does not apply to {source!r} ({self.family} family); it trains "
                f"{' or '.join(map(str, self.weight_bits))}-bit weights (leave `weights` out for that default)."
            )
        return bits

    def losses(self, model: TaskModel) -> list[LossConfig]:
        """Default distillation terms: logit KD and a half-weighted CE."""
        from compress.losses.terms import CEConfig, KDConfig

        return [KDConfig(name="kd", weight=1.0, temperature=1.0), CEConfig(name="ce", weight=0.5)]

    def transformer(self, model: TaskModel) -> bool:
        """Whether NNCF quantizes the model with its Transformer scheme (attention MatMuls included)."""
        return False


# ---- the methods ------------------------------------------------------------------------------------------------
PRUNE_DPHUBERT: Method[MaskedGroupsFn] = Method(
    "prune:dphubert", "structured pruning with hard-concrete masks (prune, method dphubert)")
PRUNE_TORCH_PRUNING: Method[ChannelPruning] = Method(
    "prune:torch_pruning", "dependency-graph channel pruning (prune, method torch_pruning)")
PRUNE_LATENCY: Method[LatencyCostsFn] = Method(
    "prune:latency", "latency targets of DPHuBERT (prune.target.latency_ms, speedup, budget)")
MOEFY: Method[FfnBlocksFn] = Method("moefy", "Mixture-of-Experts conversion of the FFNs (moefy)")
SEARCH_DISWOT: Method[Searcher] = Method(
    "search:diswot", "training-free architecture search (search, method diswot)")
SEARCH_AUTODISTIL: Method[SupernetSearcher] = Method(
    "search:autodistil", "weight-sharing super-network search (search, method autodistil)")
SEARCH_LATENCY: Method[bool] = Method(
    "search:latency", "latency-budgeted search (search.budget.max_latency_ms: latency tables of the device)")
QUANTIZE_BITSANDBYTES: Method[BitsandbytesCheck] = Method(
    "quantize:bitsandbytes", "bitsandbytes deployment (quantize, method bitsandbytes)")
QUANTIZE_QAT: Method[QatDefaults] = Method("quantize:qat", "quantization-aware training (quantize, method qat)")
QUANTIZE_PTQ: Method[bool] = Method("quantize:ptq", "onnxruntime post-training quantization (quantize, method ptq)")
QUANTIZE_BUDGET: Method[bool] = Method(
    "quantize:budget", "int8 picked by an accuracy budget (quantize, method budget)")
HIDDEN_STATES: Method[LayerStructure] = Method("hidden_states", "layer-to-layer hidden-state distillation")
LOSSES_ATTENTION: Method[bool] = Method(
    "losses:attention", "attention distillation losses (attention_map, attention_output, minilm)")
LOSSES_SEQUENCE: Method[bool] = Method(
    "losses:sequence", "token-level sequence distillation (fkl, rkl, ..., distill.student_data, teacher top-k caches)")
STUDENT_BERT: Method[bool] = Method(
    "student:bert", "built-in BERT students sliced from the teacher (student: {bert: ...})")
STUDENT_DECODER: Method[bool] = Method(
    "student:decoder", "causal-LM students sliced from the teacher (student: {decoder: ...})")
DISTILL_AUGMENT: Method[bool] = Method("distill:augment", "text augmentation of the training split (distill.augment)")
EXPORT: Method[bool] = Method("export", "export to ONNX and ExecuTorch (export)")
GENERATION: Method[bool] = Method("generation", "generation latency through a KV cache (profile.generation)")
GRADIENT_CHECKPOINTING: Method[bool] = Method(
    "gradient_checkpointing", "recomputing activations in the backward pass (train.gradient_checkpointing)")
