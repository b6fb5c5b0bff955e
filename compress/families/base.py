"""The model-family interface: what every family must answer, so stages never test what a model is.

A family is one module under `compress/families/` with a `Family` subclass registered in `FAMILIES`. It says
which recipe sources build its members (`claims`), builds, checks and adopts them, names their feature taps and
inputs, and gives the graph they deploy as (`graphs/`). Everything a method needs of a family (DPHuBERT's masked
groups, the FFN blocks `moefy` splits, a search space and its students, ...) is registered per (method, family) in
`methods.py`: `method(...)` hands the implementation to the stage, or a clear "not supported for this family".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from compress.errors import ModelError
from compress.families.methods import Method, architectures_of, implementation, registered, runs_on
from compress.models.inputs import InputSpec
from compress.models.source import SOURCE_KEYS, ModelSource, build_model
from compress.models.task_model import Kind, Modality, TaskModel
from compress.registry import Registry

if TYPE_CHECKING:
    from compress.data.dataset import Batch, DataBundle
    from compress.graphs import Graph
    from compress.quant.ptq import PtqScheme

T = TypeVar("T")


class Family(ABC):
    """One model family. Subclasses set the class attributes and implement the abstract methods; what a method
    needs of the family is registered in `methods.py`, not here."""

    name: ClassVar[str]
    modality: ClassVar[Modality]
    summary: ClassVar[str]
    kinds: ClassVar[tuple[Kind, ...]]  # the source kinds that build members of this family
    space_kind: ClassVar[str | None] = None  # the kind of search space its teachers take (`search.space.kind`)

    # ---- membership and building --------------------------------------------------------------------------
    @classmethod
    def claims(cls, kind: str, modality: str) -> bool:
        """Whether a model of this source kind on data of this modality belongs to this family."""
        return modality == cls.modality and kind in cls.kinds

    def build(
        self, source: ModelSource, *, num_labels: int, in_channels: int | None, base_dir: Path,
        teacher: TaskModel | None = None, tokenizer: Any = None, where: str = "teacher",
    ) -> TaskModel:  # fmt: skip
        """Build (and initialise) a member from a recipe source (``tokenizer``: the data's, for models built
        from scratch; ``where``: the recipe key errors name)."""
        model = build_model(source, modality=self.modality, num_labels=num_labels, in_channels=in_channels,
                            base_dir=base_dir, teacher=teacher, tokenizer=tokenizer, where=where)  # fmt: skip
        return self.adopt(model)

    def student_source(self, source: ModelSource, teacher: TaskModel, data: DataBundle) -> ModelSource:
        """A recipe's student source with what it leaves to the data decided (default: as given)."""
        return source

    def adopt(self, model: TaskModel) -> TaskModel:
        """Mark a model (built, loaded or made by a library) as a member of this family."""
        model.family = self.name
        model.features = self.feature_modules(model)
        model.input_spec = self.input_spec(model)
        return model

    def check_teacher(self, model: TaskModel, sample: Callable[[], Batch], max_length: int, where: str) -> None:
        """Checks on a freshly built teacher before anything is trained (default: a user model's forward is
        probed on a real batch)."""
        if model.kind == "python":
            model.probe(sample(), where)

    @staticmethod
    def check_positions(max_length: int, positions: int | None) -> None:
        """`data.max_length` must fit the model's position embeddings (else every long input crashes it)."""
        if positions is not None and max_length > positions:
            from compress.errors import RecipeError

            raise RecipeError(
                f"data.max_length: {max_length} tokens, but the teacher has {positions} positions. Set "
                f"data.max_length to at most {positions}."
            )

    def check_student(self, model: TaskModel, sample: Callable[[], Batch], where: str) -> None:
        """Checks on a freshly built student (default: a user model's forward is probed on a real batch)."""
        if model.kind == "python":
            model.probe(sample(), where)

    # ---- methods (`methods.py`: registered per family) ----------------------------------------------------------
    @property
    def capabilities(self) -> dict[str, tuple[str, ...]]:
        """Every method registered for this family, with the source kinds it runs on."""
        return registered(self.name)

    def supports(self, capability: str, kind: str | None = None, architecture: str | None = None) -> bool:
        """Whether members (of source ``kind``, or of any kind when None; of Hugging Face model type
        ``architecture`` when given) have an implementation of a method."""
        return runs_on(capability, self.name, kind, architecture)

    def has(self, method: Method[Any], model: TaskModel) -> bool:
        """Whether ``model`` (its source kind and Hugging Face model type) has an implementation of ``method``."""
        return self.supports(method.name, model.kind, model_type(model))

    def method(self, method: Method[T], where: str, model: TaskModel | None = None, hint: str = "") -> T:
        """The implementation of ``method`` for ``model`` (for any member when None); a clear error naming the
        family, the stage, the method and the ones that do apply when none is registered."""
        kind = model.kind if model is not None else None
        arch = model_type(model) if model is not None else None
        impl = implementation(method, self.name, kind, arch)
        if impl is not None:
            return impl
        member = self.member_words(kind, arch)
        if kind is not None and self.supports(method.name, kind):  # the kind has it, this architecture not yet
            on = ", ".join(architectures_of(method.name, self.name) or ())
            raise ModelError(f"{where}: {method.words} is not supported yet for the {member}; it runs on {on}."
                             f"{' ' + hint if hint else ''}")  # fmt: skip
        stage = method.name.split(":")[0]
        others = self.alternatives(method.name, kind, arch)
        hint = hint or (f"It has {stage} {', '.join(others)}." if others and ":" in method.name else "")
        raise ModelError(f"{where}: {method.words} is not supported for the {member}.{' ' + hint if hint else ''}")

    def alternatives(self, method: str, kind: str | None, architecture: str | None = None) -> list[str]:
        """The other methods of the same stage (`prune:dphubert` -> `torch_pruning`) that these members have."""
        stage = method.split(":")[0]
        return [m.split(":")[1] for m in self.capabilities if m.startswith(f"{stage}:") and m != method
                and self.supports(m, kind, architecture)]  # fmt: skip

    def member_words(self, kind: str | None, architecture: str | None = None) -> str:
        """How errors name a member: `encoder family (BERT-style text encoders), a Hugging Face model of type
        distilbert`."""
        if kind is None:
            return f"{self.name} family ({self.summary})"
        of = f" of type {architecture}" if kind == "hf" and architecture else ""
        return f"{self.name} family ({self.summary}), {_kind_words(kind)}{of}"

    # ---- what a model is made of ----------------------------------------------------------------------------
    @abstractmethod
    def feature_modules(self, model: TaskModel) -> list[str]:
        """Module paths whose outputs are the model's intermediate features, input to output (default taps of
        the `hidden` loss, DisWOT's feature map)."""

    @abstractmethod
    def input_spec(self, model: TaskModel) -> InputSpec:
        """What the model takes (`models/inputs.py`): exporters, latency tables and cost counters read it."""

    # ---- the graph it deploys as ----------------------------------------------------------------------------
    def ptq_scheme(self, model: TaskModel) -> PtqScheme:
        """How onnxruntime's post-training int8 treats members: the operators static int8 quantizes, and the
        attention shape for transformer fusion (default: MatMul and Gemm, no fusion)."""
        from compress.quant.ptq import PtqScheme

        return PtqScheme()

    def graph(self, model: TaskModel) -> Graph:
        """The graph the model deploys as (`graphs/`); bitsandbytes models have none."""
        from compress.graphs import TorchOnlyGraph
        from compress.models.bnb import is_bnb
        from compress.moe.convert import is_moe

        if is_bnb(model.module):
            return TorchOnlyGraph("is loaded with bitsandbytes")
        return self.deploy_graph(self.ptq_scheme(model), moe=is_moe(model.module))

    def deploy_graph(self, scheme: PtqScheme | None = None, *, moe: bool = False) -> Graph:
        """The kind of graph members deploy as (default: a logits graph that onnxruntime quantizes as ``scheme``
        says, static int8 left out for MoE models). Recipe checks ask it before any model exists, with the
        default scheme, so a graph's rule is written once."""
        from compress.graphs import LogitsGraph
        from compress.quant.ptq import PtqScheme

        return LogitsGraph(scheme or PtqScheme(), moe=moe)


def model_type(model: TaskModel) -> str | None:
    """A Hugging Face member's model type (`bert`, `llama`, ...; None for other kinds)."""
    if model.kind != "hf":
        return None
    value = getattr(getattr(model.module, "config", None), "model_type", None)
    return value if isinstance(value, str) else None


def _kind_words(kind: str) -> str:
    return {"hf": "a Hugging Face model", "cnn": "a built-in CNN", "python": "a Python factory's model"}.get(
        kind, f"a {kind} model"
    )


FAMILIES: Registry[Family] = Registry("model family")


def register_family(family: type[Family]) -> type[Family]:
    FAMILIES.add(family.name, family())
    return family


def source_key(source: ModelSource) -> str:
    """The recipe key that gives the source (`hf`, `hf_package`, `python`, `cnn`, `bert`)."""
    return next(k for k in SOURCE_KEYS if getattr(source, k) is not None)


def source_where(prefix: str, source: ModelSource) -> str:
    """How errors name a source: `teacher.python pkg.mod:make`, `distill.student.cnn CnnSpec`."""
    key = source_key(source)
    value = getattr(source, key)
    return f"{prefix}.{key} {value if isinstance(value, str) else type(value).__name__}"


def source_kind(source: ModelSource) -> str:
    """The kind of model a recipe source builds (`hf_package` and `bert` build Hugging Face models)."""
    key = source_key(source)
    return {"hf_package": "hf", "gguf": "hf", "gguf_package": "hf", "bert": "hf", "llama": "hf",
            "decoder": "hf"}.get(key, key)  # fmt: skip


def family_for(kind: str, modality: str, where: str) -> Family:
    """The family that claims models of this kind on this modality; a clear error when none does."""
    for _, family in FAMILIES.items():
        if family.claims(kind, modality):
            return family
    offered = "; ".join(
        f"{f.name}: {f.summary} ({', '.join(f.kinds)} on {f.modality} data)" for _, f in FAMILIES.items()
    )
    raise ModelError(f"{where}: no model family takes {_kind_words(kind)} on {modality} data (families: {offered}).")


def family_of(model: TaskModel) -> Family:
    """The family of a model: the one that built or loaded it, else the one that claims its kind and modality
    (which then adopts it)."""
    if model.family:
        family = FAMILIES.get(model.family)
    else:
        family = family_for(model.kind, model.modality, type(model.module).__name__)
    if model.family != family.name or not model.features or model.input_spec is None:
        family.adopt(model)
    return family


def family_of_source(source: ModelSource, data: Any, where: str) -> Family:
    """The family that builds a recipe source on this data (a `DataBundle` or the recipe's `DataConfig`; a
    modality name is taken too)."""
    return family_for(source_kind(source), data if isinstance(data, str) else data.modality, where)


def load(folder: Path) -> TaskModel:
    """Load a saved model (its recorded transforms re-applied) and adopt it into its family."""
    model = TaskModel.load(folder)
    family_of(model)
    return model
