"""The stage mould: a pydantic config + ``run(artifacts, config, context) -> artifacts``, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.artifacts import Artifact, Artifacts
from compress.config import Strict
from compress.context import Context
from compress.data.dataset import DataBundle
from compress.errors import StageError
from compress.models.task_model import TaskModel
from compress.registry import Registry
from compress.training.evaluate import evaluate
from compress.training.loop import TrainResult


class StageConfig(Strict):
    stage: str


StageFn = Callable[[Artifacts, Any, Context], Artifacts]  # Any: each stage takes its own config class


@dataclass
class StageDef:
    config: type[StageConfig]
    run: StageFn


STAGES: Registry[StageDef] = Registry("stage")


def register_stage(name: str, config: type[StageConfig]) -> Callable[[StageFn], StageFn]:
    def decorator(fn: StageFn) -> StageFn:
        STAGES.add(name, StageDef(config, fn))
        return fn

    return decorator


def require(artifacts: Artifacts, name: str, stage: str) -> None:
    if name not in artifacts:
        have = ", ".join(sorted(artifacts)) or "none"
        raise StageError(
            f"stage `{stage}` needs the artifact {name!r}, which no earlier stage produced (have: {have})."
        )


def save_model_artifact(
    model: TaskModel,
    name: str,
    ctx: Context,
    stage: str,
    parent: str | None,
    data: DataBundle,
    eval_batch_size: int,
    result: TrainResult | None = None,
) -> Artifact:
    """Measure test accuracy, save the model under the stage folder, return its artifact."""
    folder = ctx.stage_dir / name
    model.save(folder)
    metrics = {"accuracy": evaluate(model, data.test, eval_batch_size)}
    info: dict = {"family": model.family, "spec": model.spec}
    if result is not None:
        metrics["dev_accuracy"] = result.best_dev_accuracy
        info["training"] = {
            "steps": result.steps,
            "best_step": result.best_step,
            "seconds": round(result.seconds, 2),
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "history": result.history,
        }
    art = Artifact(name, "model", folder, stage, parent=parent, params=model.num_params(), metrics=metrics, info=info)
    return art.finalize()
