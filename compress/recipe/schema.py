"""The whole recipe as pydantic models. Field descriptions are the documentation (see `compress schema`)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from compress.config import Strict, TrainConfig, check_name
from compress.data.config import LM_FORMATS, DataConfig
from compress.models.source import ModelSource
from compress.report.budgets import Budget, budget_accuracy, driving_budget, speedup_reference
from compress.stages import STAGES, StageConfig


def stage_union() -> object:
    configs = tuple(d.config for _, d in STAGES.items() if d.in_recipe)
    return Annotated[Union[configs], Field(discriminator="stage")]  # noqa: UP007


if TYPE_CHECKING:
    StageUnion = StageConfig
else:
    StageUnion = stage_union()


class Deploy(Strict):
    """The input shape the artifacts are deployed at, set once: every shape the recipe leaves unset follows it."""

    batch: int | None = Field(
        None, gt=0, le=65536, description="Batch size: profile.shape.batch and export.executorch.batch follow it."
    )
    sequence: int | None = Field(
        None,
        gt=0,
        le=8192,
        description="Tokens per input of text models: data.max_length, profile.shape.sequence, "
        "export.executorch.sequence, search.budget.sequence and prune.target.sequence follow it.",
    )
    device: str | None = Field(
        None,
        description="The device whose budget drives the budget-driven stages (`search.budget: recipe`, "
        "`prune.target: budget`). Default: the first device in `budgets` with a `p50_ms` or `p90_ms` limit.",
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="What the budget-driven stages time: `int8` when the deployed artifact is int8 (on an "
        "onnxruntime device the dynamic-int8 graph of `export.int8: [dynamic]`, on an OpenVINO device the static "
        "QDQ graph of `export.int8: [static]`), so search and pruning see quantization's measured gain; else "
        "`fp32`.",
    )


# Of the recipe's latency limit, the share a `search.budget: recipe` leaves to a later `prune.target: budget`
# stage: search picks a student up to 25% slower than the budget and DPHuBERT prunes it down to the budget
# (pruning a larger distilled model loses less than starting from a smaller one, as in DPHuBERT and CoFi).
PRUNE_SHARE = 0.25


def _fill_budgets(data: dict[str, Any]) -> None:
    """Turn `search.budget: recipe` and `prune.target: budget` into the recipe budget's numbers (before validation,
    so the stage configs, their cache keys and `compress schema` stay plain)."""
    given: list[Any] = data["stages"] if isinstance(data.get("stages"), list) else []
    stages: list[dict[str, Any]] = [s if isinstance(s, dict) else {} for s in given]
    for i, stage in enumerate(stages):  # the accuracy part: quantize `method: budget`
        if stage.get("stage") == "quantize" and stage.get("method") == "budget" and "accuracy_drop" not in stage:
            drop = budget_accuracy(data)
            if drop is None:
                raise ValueError(f"stages[{i}].accuracy_drop: `method: budget` takes the accuracy part of the "
                                 "recipe's budget, but no device in `budgets` has an accuracy_drop; give one, e.g. "
                                 "`budgets: {x86-cpu: {accuracy_drop: 1.0}}`, or set accuracy_drop here")  # fmt: skip
            stage["accuracy_drop"] = drop
    search = [i for i, s in enumerate(stages) if s.get("stage") == "search" and s.get("budget") == "recipe"]
    prune = [i for i, s in enumerate(stages) if s.get("stage") == "prune" and s.get("target") == "budget"]
    if not search and not prune:
        return
    found = driving_budget(data)
    deploy: dict[str, Any] = data["deploy"] if isinstance(data.get("deploy"), dict) else {}
    if found is None:
        where = "deploy.device names no device in `budgets` with" if deploy.get("device") else "`budgets` has no"
        first = search[0] if search else prune[0]
        key = "budget: recipe" if search else "target: budget"
        raise ValueError(f"stages[{first}].{key.split(':')[0]}: `{key}` takes its latency from the recipe's budget, "
                         f"but {where} p50_ms or p90_ms limit; add one, e.g. `budgets: {{x86-cpu: {{p90_ms: 2.0, "
                         "accuracy_drop: 1.0}}`")  # fmt: skip
    device, percentile, limit = found
    precision = deploy.get("precision", "fp32")
    if percentile == "speedup":  # a ratio to the teacher, measured with it; search tables hold absolute ms
        if search:
            raise ValueError(f"stages[{search[0]}].budget: `budget: recipe` needs a latency limit in ms, and "
                             f"budgets.{device} gives a `speedup`; give it a p50_ms or p90_ms too, or state the "
                             "search's own `budget: {max_latency_ms: ...}`")  # fmt: skip
        for i in prune:
            stages[i]["target"] = {"speedup": limit, "reference": speedup_reference(data, device), "device": device,
                                   "precision": precision, "if_met": "keep"}  # fmt: skip
        return
    for i in search:
        later_prune = any(j > i for j in prune)
        share = PRUNE_SHARE if later_prune else 0.0
        stages[i]["budget"] = {"max_latency_ms": round(limit * (1 + share), 6), "device": device,
                               "percentile": percentile, "precision": precision}  # fmt: skip
    for i in prune:
        stages[i]["target"] = {"latency_ms": limit, "device": device, "percentile": percentile, "precision": precision,
                               "if_met": "keep"}  # fmt: skip


# profile rounds for a recipe whose budget is a speed-up (`profile.rounds`): the teacher and the artifact each at
# their fastest of these
SPEEDUP_ROUNDS = 5


def _fill_profile_rounds(data: dict[str, Any]) -> None:
    """A recipe with a `speedup` budget times its profile stages in `SPEEDUP_ROUNDS` rounds unless they say."""
    budgets = data["budgets"] if isinstance(data.get("budgets"), dict) else {}
    if not any(isinstance(b, dict) and b.get("speedup") is not None for b in budgets.values()):
        return
    for stage in data["stages"] if isinstance(data.get("stages"), list) else []:
        if isinstance(stage, dict) and stage.get("stage") == "profile":
            stage.setdefault("rounds", SPEEDUP_ROUNDS)


def _fill_rerank_losses(data: dict[str, Any]) -> None:
    """`search.rerank` without `losses` ranks candidates by the losses the next `distill` stage trains with."""
    given: list[Any] = data["stages"] if isinstance(data.get("stages"), list) else []
    stages: list[dict[str, Any]] = [s if isinstance(s, dict) else {} for s in given]
    for i, stage in enumerate(stages):
        rerank = stage.get("rerank") if stage.get("stage") == "search" else None
        if not isinstance(rerank, dict) or "losses" in rerank:
            continue
        later = next((s for s in stages[i + 1 :] if s.get("stage") == "distill"), None)
        if later is not None and "losses" in later:
            rerank["losses"] = copy.deepcopy(later["losses"])


# where each deploy value lands, per stage: (stage, path of the sub-mapping, key, deploy field)
DEPLOY_KEYS = (
    ("profile", ("shape",), "sequence", "sequence"),
    ("profile", ("shape",), "batch", "batch"),
    ("export", ("executorch",), "sequence", "sequence"),
    ("export", ("executorch",), "batch", "batch"),
    ("search", ("budget",), "sequence", "sequence"),
    ("prune", ("target",), "sequence", "sequence"),
)


class Recipe(Strict):
    """A compression recipe: a teacher, data, and the stages that turn the teacher into deployable artifacts."""

    name: str = Field(..., description="Recipe name; artifacts go to `export/<name>/` unless --out is given.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for data splits, initialisation and shuffling.")
    task: Literal["classification", "causal_lm"] = Field(
        "classification",
        description="`classification` (labelled text or images) or `causal_lm` (next-token prediction on text: a "
        "decoder teacher, data packed into blocks, perplexity as the metric).",
    )
    data: DataConfig = Field(..., description="The data set.")
    teacher: ModelSource = Field(..., description="The teacher model.")
    stages: list[StageUnion] = Field(..., min_length=1, description="Stages, run in order.")
    deploy: Deploy | None = Field(
        None,
        description="The deployment shape, given once: shapes the recipe leaves unset (data.max_length, profile, "
        "ExecuTorch export, search budget, prune target) follow it; a shape a stage sets itself wins.",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Where and how the training stages train: device, precision, gradient accumulation and "
        "checkpointing, checkpoints for resuming. Processes come from the launcher (torchrun, accelerate launch).",
    )
    budgets: dict[str, Budget] = Field(
        default_factory=dict,
        description="Per device name: limits the artifacts must meet. A miss fails the run (exit code 3) after "
        "report.json, report.md and junit.xml are written.",
    )

    @model_validator(mode="before")
    @classmethod
    def _deploy(cls, data: Any) -> Any:
        """Fill the budget-driven stages from `budgets` and the shapes the recipe leaves unset from `deploy`
        (before validation: every field stays an int)."""
        if isinstance(data, dict):
            _fill_budgets(data)
            _fill_profile_rounds(data)
            _fill_rerank_losses(data)
        deploy = data.get("deploy") if isinstance(data, dict) else None
        if not isinstance(deploy, dict):
            return data
        values = {k: deploy.get(k) for k in ("batch", "sequence")}
        values = {k: v for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0}
        if "sequence" in values and isinstance(data.get("data"), dict):
            data["data"].setdefault("max_length", values["sequence"])
        for stage in data.get("stages") or []:
            if not isinstance(stage, dict):
                continue
            for kind, path, key, field in DEPLOY_KEYS:
                if stage.get("stage") != kind or field not in values:
                    continue
                node: Any = stage
                for part in path:
                    node = node.get(part) if isinstance(node, dict) else None
                if node is None and kind == "profile":  # profile's shape is optional: make it
                    node = stage.setdefault(path[0], {})
                if isinstance(node, dict):
                    node.setdefault(key, values[field])
        return data

    @model_validator(mode="after")
    def _task(self) -> Recipe:
        self.data._task = self.task
        fmt = self.data.format
        if self.task == "causal_lm" and fmt not in LM_FORMATS:
            raise ValueError(f"task causal_lm reads documents: data.format must be jsonl or text, not {fmt}")
        if self.task == "classification" and fmt == "text":
            raise ValueError("data.format text is for `task: causal_lm` (plain documents have no labels)")
        for key in ("llama", "gguf", "gguf_package"):
            if self.task != "causal_lm" and getattr(self.teacher, key) is not None:
                raise ValueError(f"teacher.{key} builds a causal language model; it needs `task: causal_lm`")
        if self.teacher.llama is not None and self.data.tokenizer is None:
            raise ValueError("teacher.llama is built from scratch and needs a tokenizer: set data.tokenizer (e.g. "
                             "{vocab_size: 4096}) to train one on the training split")
        if self.data.tokenizer is not None and self.teacher.llama is None:
            raise ValueError("data.tokenizer trains a tokenizer for a teacher built from scratch (teacher.llama); "
                             "this teacher brings its own: remove data.tokenizer")
        if self.task == "classification" and self.data.tokenizer is not None:
            raise ValueError("data.tokenizer trains a tokenizer for `task: causal_lm`; classification uses the "
                             "teacher's")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: ModelSource) -> ModelSource:
        for key in ("bert", "decoder"):
            if getattr(v, key) is not None:
                raise ValueError(
                    f"`{key}` builds a student from a teacher; give the teacher as hf, hf_package, gguf, "
                    "gguf_package, python, cnn or llama"
                )
        return v
