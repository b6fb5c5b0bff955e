"""Helpers shared by the training stages: saving a trained model as an artifact."""

from __future__ import annotations

from compress.artifacts import Artifact
from compress.context import Context
from compress.data.dataset import DataBundle
from compress.models.task_model import TaskModel
from compress.training.evaluate import evaluate
from compress.training.loop import TrainResult


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
