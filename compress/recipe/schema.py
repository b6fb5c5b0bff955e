"""The whole recipe as pydantic models. Field descriptions are the documentation (see `compress schema`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from compress.config import Strict, TrainConfig, check_name
from compress.data.config import LM_FORMATS, DataConfig
from compress.models.source import ModelSource
from compress.report.budgets import Budget
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
        """Fill the shapes the recipe leaves unset from `deploy` (before validation: every field stays an int)."""
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
        if self.task != "causal_lm" and self.teacher.llama is not None:
            raise ValueError("teacher.llama builds a causal language model; it needs `task: causal_lm`")
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
                    f"`{key}` builds a student from a teacher; give the teacher as hf, hf_package, python, cnn or "
                    "llama"
                )
        return v
