"""Checks across stages that need no model: what `run` would refuse minutes in, refused by `validate` and
before the first stage of `run`. Each stage's rules are its config's own (`StageConfig.check`); this module only
walks the chain and adds what spans the recipe. Each problem names the recipe key to change."""

from __future__ import annotations

from pathlib import Path

from compress.errors import RecipeError
from compress.families.chain import Chain
from compress.recipe.schema import Recipe


def check_chain(recipe: Recipe, base_dir: Path | None = None) -> None:
    """Every stage config checks itself against the chain it sits in (`StageConfig.check`: the teacher's family
    and architecture, the data, the stages before it); the recipe-wide checks follow. Refused with every problem
    at once. ``base_dir``: the recipe's folder, where a local teacher's config says its model type."""
    from compress.errors import ModelError
    from compress.families import family_of_source, source_key, source_kind
    from compress.models.source import source_model_type

    where = f"teacher.{source_key(recipe.teacher)} (data.format {recipe.data.format})"
    try:
        family = family_of_source(recipe.teacher, recipe.data, where)
    except ModelError as exc:
        raise RecipeError(f"{exc} Use a teacher of a family that takes {recipe.data.modality} data.") from None
    architecture = source_model_type(recipe.teacher, base_dir) if base_dir is not None else None
    chain = Chain(family, source_kind(recipe.teacher), recipe.teacher.describe(), recipe.data,
                  architecture=architecture)  # fmt: skip
    problems: list[str] = []
    for i, stage in enumerate(recipe.stages):
        chain.key = f"stages[{i}]"
        problems += stage.check(chain)
        chain.before.append(stage)
        made = stage.produces()
        if made is not None:
            (chain.moe.add if stage.makes_moe else chain.moe.discard)(made)
    if recipe.train.gradient_checkpointing and not chain.supports("gradient_checkpointing"):
        problems.append(f"train.gradient_checkpointing: {chain.member} cannot recompute its activations (Hugging "
                        "Face models can); set it to false.")  # fmt: skip
    problems += _batch_splits(recipe)
    if problems:
        raise RecipeError("\n".join(problems))


def _batch_splits(recipe: Recipe) -> list[str]:
    """Every training schedule's global batch must give each launched process at least one example per
    micro-batch: refused before any work, not when the stage starts."""
    from compress.config import TrainSchedule
    from compress.training.engine import launched_world

    _, world, _ = launched_world()
    accumulation = recipe.train.gradient_accumulation
    parts = world * accumulation
    found = []
    for i, stage in enumerate(recipe.stages):
        if not stage.trains():
            continue
        schedules = [("", stage)] if isinstance(stage, TrainSchedule) else []
        schedules += [(f".{k}", v) for k, v in stage if isinstance(v, TrainSchedule)]
        for key, schedule in schedules:
            if schedule.batch_size < parts:
                found.append(
                    f"stages[{i}]{key}.batch_size: {schedule.batch_size} cannot be split over {world} process(es) x "
                    f"{accumulation} accumulation step(s) (train.gradient_accumulation); give at least {parts}, or "
                    "launch fewer processes."
                )
    return found
