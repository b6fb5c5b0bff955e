"""`finetune`: train a model (by default the teacher) on the labels with cross-entropy."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from compress.artifacts import Artifacts
from compress.config import TrainSchedule
from compress.context import Context
from compress.data.dataset import Batch
from compress.losses.functional import ce_loss
from compress.stages.base import StageConfig, register_stage, require, save_model_artifact
from compress.training.loop import train

log = logging.getLogger("compress")


class FinetuneConfig(StageConfig, TrainSchedule):
    """Fine-tune a model on the task labels (e.g. a pretrained backbone into a teacher)."""

    stage: Literal["finetune"]
    target: str = Field("teacher", description="Name of the model artifact to fine-tune.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy.")

    def trains(self) -> bool:
        return True


@register_stage("finetune", FinetuneConfig)
def run(artifacts: Artifacts, config: FinetuneConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    require(artifacts, config.target, "finetune")
    source = artifacts[config.target]
    model = ctx.load_model(source)
    data = ctx.data()

    def step(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss = ce_loss(model.logits(batch), batch["labels"], label_smoothing=config.label_smoothing)
        return loss, {}

    result = train(model, step, data.train, data.dev, config, session=ctx.session(), label=f"finetune {config.target}")
    art = save_model_artifact(
        model, config.target, ctx, "finetune", source.parent, data, config.eval_batch_size, result
    )
    return {config.target: art}
