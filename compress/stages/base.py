"""The stage mould: a pydantic config + ``run(artifacts, config, context) -> artifacts``, registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compress.artifacts import Artifacts
from compress.context import Context
from compress.errors import StageError
from compress.recipe.base import Strict
from compress.registry import Registry


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
