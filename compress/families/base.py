"""The model-family interface: everything a stage would otherwise ask by testing what a model is.

A family is one module under `compress/families/` with a `Family` subclass registered in `FAMILIES`. It says
which recipe sources build its members (`claims`), builds and adopts them, names their feature taps, answers
which stage methods apply (`supports` / `require`: a clear "not supported for this family" otherwise), and
hands stages the family-specific pieces: hidden states for layer-to-layer distillation, the masked groups that
DPHuBERT prunes, the FFN blocks that `moefy` splits, the search space and the student a searched arch becomes,
the default quantization-aware distillation losses. Stages call these and never test a model's kind, modality
or class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.inputs import InputSpec
from compress.models.source import SOURCE_KEYS, ModelSource, build_model
from compress.models.task_model import Kind, Modality, TaskModel
from compress.registry import Registry

if TYPE_CHECKING:
    from compress.data.dataset import Batch, DataBundle
    from compress.devices import DeviceProfile
    from compress.graphs import Graph
    from compress.losses import LossConfig
    from compress.moe.experts import FfnBlock
    from compress.pruning.latency_costs import LatencyCosts
    from compress.pruning.masked import MaskedGroups, PruneGoal
    from compress.quant.ptq import PtqScheme
    from compress.search.space import Arch, Space
    from compress.search.supernet import SlicedSuperNet

# What a stage may ask for; `supports(capability, kind)` answers per source kind.
CAPABILITIES = {
    "prune:dphubert": "structured pruning with hard-concrete masks (prune, method dphubert)",
    "prune:torch_pruning": "dependency-graph channel pruning (prune, method torch_pruning)",
    "moefy": "Mixture-of-Experts conversion of the FFNs (moefy)",
    "search:diswot": "training-free architecture search (search, method diswot)",
    "search:autodistil": "weight-sharing super-network search (search, method autodistil)",
    "search:latency": "latency-budgeted search (search.budget.max_latency_ms: latency tables of the device)",
    "quantize:bitsandbytes": "bitsandbytes deployment (quantize, method bitsandbytes)",
    "losses:attention": "attention distillation losses (attention_map, attention_output, minilm)",
    "hidden_states": "layer-to-layer hidden-state distillation",
    "student:bert": "built-in BERT students sliced from the teacher (student: {bert: ...})",
    "student:decoder": "causal-LM students sliced from the teacher (student: {decoder: ...})",
    "export": "export to ONNX and ExecuTorch (export)",
    "quantize:qat": "quantization-aware training (quantize, method qat)",
    "quantize:ptq": "onnxruntime post-training quantization (quantize, method ptq)",
    "quantize:budget": "int8 picked by an accuracy budget (quantize, method budget)",
    "gradient_checkpointing": "recomputing activations in the backward pass (train.gradient_checkpointing)",
    "distill:augment": "text augmentation of the training split (distill.augment)",
    "losses:sequence": "token-level sequence distillation (fkl, rkl, ..., distill.student_data, teacher top-k caches)",
    "generation": "generation latency through a KV cache (profile.generation)",
    "prune:latency": "latency targets of DPHuBERT (prune.target.latency_ms, speedup, budget)",
}

# capability -> the Family method that implements it, and whether only families with the capability may override
# that method (a method several capabilities share, like `search_space`, is checked one way). A family that
# declares a capability without its method, or overrides an exclusive method without declaring the capability,
# is refused when its class is defined: what `validate` promises is what the run has.
IMPLEMENTED_BY: dict[str, tuple[str, bool]] = {
    "prune:dphubert": ("masked_groups", True),
    "prune:latency": ("latency_costs", True),
    "prune:torch_pruning": ("example_input", True),
    "moefy": ("ffn_blocks", True),
    "search:diswot": ("search_space", False),
    "search:autodistil": ("supernet", True),
    "hidden_states": ("hidden_states", True),
    "generation": ("deploy_graph", True),
}


class Family(ABC):
    """One model family. Subclasses set the class attributes and implement the abstract methods; the defaults
    of the others say "not supported for this family"."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None) and "name" not in cls.__dict__:
            return  # an intermediate base, not a family
        for capability, (method, exclusive) in IMPLEMENTED_BY.items():
            declared = bool(cls.capabilities.get(capability))
            overridden = getattr(cls, method) is not getattr(Family, method)
            if declared and not overridden:
                raise TypeError(f"family {cls.__name__} declares `{capability}` but does not implement `{method}`")
            if exclusive and overridden and not declared:
                raise TypeError(f"family {cls.__name__} implements `{method}` but does not declare `{capability}`")

    name: ClassVar[str]
    modality: ClassVar[Modality]
    summary: ClassVar[str]
    kinds: ClassVar[tuple[Kind, ...]]  # the source kinds that build members of this family
    capabilities: ClassVar[dict[str, tuple[str, ...]]] = {}  # capability -> the kinds that have it
    space_kind: ClassVar[str | None] = None  # the kind of search space its teachers take (`search.space.kind`)
    qat_weight_bits: ClassVar[tuple[int, ...]] = (8, 4)  # the weight widths `quantize: qat` trains; first: default

    # ---- membership and building --------------------------------------------------------------------------
    @classmethod
    def claims(cls, kind: str, modality: str) -> bool:
        """Whether a model of this source kind on data of this modality belongs to this family."""
        return modality == cls.modality and kind in cls.kinds

    def build(
        self, source: ModelSource, *, num_labels: int, in_channels: int | None, base_dir: Path,
        teacher: TaskModel | None = None, tokenizer: Any = None,
    ) -> TaskModel:  # fmt: skip
        """Build (and initialise) a member from a recipe source (``tokenizer``: the data's, for models built
        from scratch)."""
        model = build_model(source, modality=self.modality, num_labels=num_labels, in_channels=in_channels,
                            base_dir=base_dir, teacher=teacher, tokenizer=tokenizer)  # fmt: skip
        return self.adopt(model)

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

    # ---- capabilities -----------------------------------------------------------------------------------------
    def supports(self, capability: str, kind: str | None = None) -> bool:
        """Whether members (of source ``kind``, or of any kind when None) support a capability."""
        kinds = self.capabilities.get(capability, ())
        return bool(kinds) if kind is None else kind in kinds

    def require(self, capability: str, where: str, model: TaskModel | None = None, hint: str = "") -> None:
        """Raise a clear error naming the family, the stage and the capability when it does not apply."""
        kind = model.kind if model is not None else None
        if self.supports(capability, kind):
            return
        what = CAPABILITIES.get(capability, capability)
        member = f"{self.name} family ({self.summary})" if kind is None else (
            f"{self.name} family ({self.summary}), {_kind_words(kind)}")  # fmt: skip
        raise ModelError(f"{where}: {what} is not supported for the {member}.{' ' + hint if hint else ''}")

    # ---- what a model is made of ----------------------------------------------------------------------------
    @abstractmethod
    def feature_modules(self, model: TaskModel) -> list[str]:
        """Module paths whose outputs are the model's intermediate features, input to output (default taps of
        the `hidden` loss, DisWOT's feature map)."""

    @abstractmethod
    def input_spec(self, model: TaskModel) -> InputSpec:
        """What the model takes (`models/inputs.py`): exporters, latency tables and cost counters read it."""

    def positions(self, model: TaskModel) -> int | None:
        """How many input positions the model has (None: no limit or unknown)."""
        return None

    def input_shape(self, data: DataBundle) -> tuple[int, ...] | None:
        """The per-example input shape that sizes cost counts and latency tables (None: token sequences)."""
        return None

    def layers(self, model: TaskModel) -> int:
        raise ModelError(f"the {self.name} family has no layer-to-layer structure.")

    def hidden_states(
        self, model: TaskModel, batch: Batch, layers: list[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the outputs of the given layers (0-based)."""
        raise ModelError(f"the {self.name} family has no hidden states to distil layer to layer.")

    def hidden_width(self, model: TaskModel) -> int:
        raise ModelError(f"the {self.name} family has no hidden states to distil layer to layer.")

    def default_layer_map(self, student: TaskModel, teacher: TaskModel) -> list[int]:
        """The teacher layer each student layer matches by default."""
        raise ModelError(f"the {self.name} family has no layer-to-layer structure.")

    # ---- stage pieces ------------------------------------------------------------------------------------------
    def masked_groups(self, model: TaskModel, goal: PruneGoal, where: str, data: DataBundle) -> MaskedGroups:
        """DPHuBERT's prunable groups with their hard-concrete masks, sized against ``goal``."""
        self.require("prune:dphubert", where, model)
        raise AssertionError("unreachable")

    def latency_costs(self, model: TaskModel, device: DeviceProfile, sequence: int, cache_dir: Path, *,
                      precision: str, statistic: str,
                      reference: tuple[DeviceProfile, Path] | None = None) -> LatencyCosts:  # fmt: skip
        """The ms each of DPHuBERT's groups costs on ``device``, timed as deployed (``reference``: a teacher graph
        timed in the same rounds, for a speed-up target)."""
        raise ModelError(f"prune.target: latency targets time Transformer encoders and causal LMs; the {self.name} "
                         "family's are not timed. Give a `params` target.")  # fmt: skip

    def ffn_blocks(self, model: TaskModel, where: str) -> list[FfnBlock]:
        """The FFN blocks `moefy` turns into experts."""
        self.require("moefy", where, model)
        raise AssertionError("unreachable")

    def search_space(self, space: Space | None, teacher: TaskModel, where: str) -> Space:
        """The search space (the recipe's, checked against the teacher, or the family's default)."""
        self.require("search:diswot", where, teacher)
        raise AssertionError("unreachable")

    def search_candidate(self, space: Space, arch: Arch, teacher: TaskModel, *, in_channels: int | None,
                         seed: int) -> TaskModel:  # fmt: skip
        """A randomly initialised candidate of the arch (costs and DisWOT scores), seeded by ``seed`` and the arch."""
        from compress.search.candidates import build_candidate

        return build_candidate(space, arch, teacher, in_channels=in_channels, seed=seed)

    def supernet(self, teacher: TaskModel) -> SlicedSuperNet:
        """AutoDistil's weight-sharing super-network over the teacher."""
        self.require("search:autodistil", "search", teacher)
        raise AssertionError("unreachable")

    def search_student(self, space: Space, arch: Arch, teacher: TaskModel, data: DataBundle, seed: int,
                       supernet: Any = None) -> TaskModel:  # fmt: skip
        """The student a searched arch becomes (``supernet``: AutoDistil's trained weights, when there are)."""
        raise ModelError(f"the {self.name} family has no search students.")

    def check_bitsandbytes(self, model: TaskModel, where: str) -> None:
        """Refuse a model that bitsandbytes cannot reload quantized (default: a family without the capability)."""
        self.require("quantize:bitsandbytes", where, model, "Quantize it with qat or ptq.")

    def qat_losses(self, model: TaskModel) -> list[LossConfig]:
        """Default distillation terms of quantization-aware training."""
        from compress.losses.terms import CEConfig, KDConfig

        return [KDConfig(name="kd", weight=1.0, temperature=1.0), CEConfig(name="ce", weight=0.5)]

    def qat_transformer(self, model: TaskModel) -> bool:
        """Whether NNCF quantizes the model with its Transformer scheme (attention MatMuls included)."""
        return False

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

    def example_input(self, data: DataBundle) -> torch.Tensor:
        """One example as the single tensor dependency-graph tracers take (torch-pruning)."""
        raise ModelError(f"the {self.name} family has no single-tensor example input.")

    def reference(self, model: TaskModel) -> nn.Module:
        """A fresh, unchanged build of the model (what structural changes are recorded against)."""
        raise ModelError(f"the {self.name} family cannot rebuild {model.kind} models from their spec.")


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
    return {"hf_package": "hf", "bert": "hf", "llama": "hf", "decoder": "hf"}.get(key, key)


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
