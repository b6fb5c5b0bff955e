"""The whole recipe as pydantic models. Field descriptions are the documentation (see `compress schema`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import Field, field_validator

from compress.config import Strict, check_name
from compress.data.config import DataConfig
from compress.models.source import ModelSource
from compress.report.budgets import Budget
from compress.stages import STAGES, StageConfig


def stage_union() -> object:
    configs = tuple(d.config for _, d in STAGES.items())
    return Annotated[Union[configs], Field(discriminator="stage")]  # noqa: UP007


if TYPE_CHECKING:
    StageUnion = StageConfig
else:
    StageUnion = stage_union()


class Recipe(Strict):
    """A compression recipe: a teacher, data, and the stages that turn the teacher into deployable artifacts."""

    name: str = Field(..., description="Recipe name; artifacts go to `export/<name>/` unless --out is given.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed for data splits, initialisation and shuffling.")
    task: Literal["classification"] = Field("classification", description="The task (classification).")
    data: DataConfig = Field(..., description="The data set.")
    teacher: ModelSource = Field(..., description="The teacher model.")
    stages: list[StageUnion] = Field(..., min_length=1, description="Stages, run in order.")
    budgets: dict[str, Budget] = Field(
        default_factory=dict,
        description="Per device name: limits the artifacts must meet. A miss fails the run (exit code 3) after "
        "report.json, report.md and junit.xml are written.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: ModelSource) -> ModelSource:
        if v.bert is not None:
            raise ValueError(
                "`bert` builds a student from a teacher; give the teacher as hf, hf_package, python or cnn"
            )
        return v
