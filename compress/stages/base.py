"""The stage mould: a pydantic config + ``run(artifacts, config, context) -> artifacts``, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from compress.artifacts import Artifact, Artifacts
from compress.config import Strict, method_union
from compress.context import Context
from compress.data.dataset import DataBundle
from compress.errors import CompressError, RecipeError, StageError
from compress.families.chain import Chain
from compress.models.task_model import TaskModel
from compress.registry import Registry
from compress.training.evaluate import metrics as evaluation_metrics
from compress.training.loop import TrainResult


class StageConfig(Strict):
    stage: str
    makes_moe: ClassVar[bool] = False  # the model it writes (`produces`) has Mixture-of-Experts layers

    def check(self, chain: Chain) -> list[str]:
        """What cannot work for this stage in this chain, each problem naming its key (`stages[2].method: ...`):
        `validate` and the start of `run` both ask, before any work. Default: nothing."""
        return []

    def produces(self) -> str | None:
        """The model artifact this stage writes (None: only ONNX files or measurements)."""
        return None

    def measured_devices(self) -> list[str]:
        """Device references this stage measures artifacts on (where the recipe's `budgets` can apply)."""
        return []

    def trains(self) -> bool:
        """Whether this stage trains with the engine: under several processes every process runs it (each on its
        shard); a stage that does not is run by rank 0 alone while the others wait at the stage boundary."""
        return False

    def latency_devices(self) -> dict[str, str]:
        """Devices a latency limit of this stage is measured on, by the key that names each (e.g.
        ``{"target.device": "x86-cpu"}``)."""
        return {}

    def preflight(self, key: str, base_dir: Path) -> None:
        """Checks before any stage runs: every device a latency limit needs resolves and can be measured here.
        Errors name ``key`` (``stages[i]``) and the stage's own key."""
        from compress.devices import resolve_device
        from compress.runtimes.base import get_runtime

        for name, ref in self.latency_devices().items():
            try:
                profile = resolve_device(ref, base_dir)
                ok, why = get_runtime(profile.runtime).available(profile.provider)
            except CompressError as exc:
                raise RecipeError(f"{key}.{name}: {exc}") from None
            if not ok:
                raise RecipeError(f"{key}.{name}: device {profile.name!r} cannot be measured here: {why}.")


StageFn = Callable[[Artifacts, Any, Context], Artifacts]  # Any: each stage takes its own config class


@dataclass
class StageDef:
    config: Any  # the config class, or the discriminated union of the method classes (`method_union`)
    run: StageFn
    configs: tuple[type[StageConfig], ...]  # the config classes (one per method)
    in_recipe: bool = True  # False: the pipeline makes it (the teacher), a recipe cannot list it


STAGES: Registry[StageDef] = Registry("stage")


def register_stage(name: str, *configs: type[StageConfig], in_recipe: bool = True) -> Callable[[StageFn], StageFn]:
    """Register a stage's `run` under its name. One config class, or one per method: the first is the default
    when a recipe leaves `method` out (if its `method` has a default), and the recipe picks the class by its
    `method` key."""

    def decorator(fn: StageFn) -> StageFn:
        config = configs[0] if len(configs) == 1 else method_union(_method(configs[0]), *configs)
        STAGES.add(name, StageDef(config, fn, configs, in_recipe))
        return fn

    return decorator


def _method(config: type[StageConfig]) -> str | None:
    """The method a recipe gets when it leaves `method` out (None: the recipe must name one)."""
    default = config.model_fields["method"].default
    return default if isinstance(default, str) else None


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
    """Measure the task metrics on the test split (accuracy; perplexity for causal LMs), save the model under the
    stage folder, return its artifact."""
    folder = ctx.stage_dir / name
    model.save(folder)
    metrics = evaluation_metrics(model, data.test, eval_batch_size)
    info: dict = {"family": model.family, "kind": model.kind, "spec": model.spec}
    if model.transforms:
        info["transforms"] = [t["name"] for t in model.transforms]
    if result is not None:
        metrics[f"dev_{result.dev_metric}"] = result.best_dev
        info["training"] = {
            "steps": result.steps,
            "best_step": result.best_step,
            "seconds": round(result.seconds, 2),
            "first_loss": result.first_loss,
            "last_loss": result.last_loss,
            "history": result.history,
            "checkpoints": result.checkpoints,
            "checkpoint_seconds": round(result.checkpoint_seconds, 4),
        }
    art = Artifact(name, "model", folder, stage, parent=parent, params=model.num_params(), metrics=metrics, info=info)
    return art.finalize()


ATTENTION_LOSSES = ("attention_map", "attention_output", "minilm")


def check_losses(losses: list[Any] | None, chain: Chain, key: str) -> list[str]:
    """Attention losses need a family with attention to compare."""
    attention = [c.name for c in losses or [] if c.name in ATTENTION_LOSSES]
    if attention and not chain.supports("losses:attention"):
        return [f"{key}: {', '.join(attention)} compare attention of Transformer encoders; {chain.member} has none"
                f"{chain.not_yet('losses:attention')}. Use kd, ce or hidden."]  # fmt: skip
    return []


def check_student(student: Any, chain: Chain, key: str) -> list[str]:
    """A built-in student must be one the teacher's family slices."""
    if student is not None and student.bert is not None and not chain.supports("student:bert"):
        return [f"{key}.bert: `bert` students are built from a Hugging Face BERT-family teacher; {chain.member} has "
                f"none{chain.not_yet('student:bert')}. Use a `python` or `hf:` student."]  # fmt: skip
    if student is not None and student.decoder is not None and not chain.supports("student:decoder"):
        why = chain.not_yet("student:decoder")
        return [f"{key}.decoder: `decoder` students are sliced from a LLaMA-layout causal-LM teacher (`task: "
                f"causal_lm`); {chain.member} is not one{why}. Use a `llama:` or `hf:` student."]  # fmt: skip
    return []


def check_method(chain: Chain, stage: str, method: str) -> list[str]:
    """A stage method the teacher's family has no implementation of, refused naming the ones it has."""
    if chain.supports(f"{stage}:{method}"):
        return []
    others = chain.alternatives(f"{stage}:{method}")
    hint = f"use `method: {others[0]}`" if others else f"{stage} does not apply to it"
    return [f"{chain.key}.method: {method} does not apply to {chain.member}{chain.not_yet(f'{stage}:{method}')}; "
            f"{hint}."]
