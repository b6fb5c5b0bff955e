"""`teacher`: stage 0 of every run, made from the recipe's `teacher` key (not listed in `stages`). The teacher's
family builds it (a fresh head sized to the data's labels), checks it against the data before anything trains,
and saves it; every later stage loads it from the cache."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compress.artifacts import Artifact, Artifacts
from compress.context import Context
from compress.families import family_of_source, source_where
from compress.models.source import ModelSource
from compress.stages.base import StageConfig, register_stage


class TeacherConfig(StageConfig):
    """The teacher, built from the recipe's top-level `teacher` key."""

    stage: Literal["teacher"]
    source: ModelSource = Field(..., description="The teacher model (the recipe's `teacher`).")


@register_stage("teacher", TeacherConfig, in_recipe=False)
def run(artifacts: Artifacts, config: TeacherConfig, ctx: Context) -> Artifacts:
    data_config = ctx.recipe.data
    family = family_of_source(config.source, data_config.modality, "teacher")
    num_labels, in_channels = ctx.label_info()
    torch.manual_seed(ctx.seed)
    model = family.build(config.source, num_labels=num_labels, in_channels=in_channels, base_dir=ctx.base_dir)
    folder = ctx.stage_dir / "teacher"
    model.save(folder)

    def sample() -> dict[str, torch.Tensor]:
        ctx.tokenizer_folder = ctx.tokenizer_folder or folder  # text is tokenised with the teacher's tokenizer
        train = ctx.data().train
        return train.collate(list(range(min(2, len(train)))))

    family.check_teacher(model, sample, data_config.max_length, source_where("teacher", config.source))
    art = Artifact(
        "teacher", "model", folder, "teacher", params=model.num_params(),
        info={"family": model.family, "kind": model.kind, "source": config.source.describe()},
    )  # fmt: skip
    return {"teacher": art.finalize()}
