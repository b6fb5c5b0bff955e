"""Pipeline stages. Importing this package registers every built-in stage."""

from compress.stages import distill, export, finetune, moefy, profile, prune, quantize, search, teacher  # noqa: F401
from compress.stages.base import STAGES, StageConfig, StageDef, register_stage

__all__ = ["STAGES", "StageConfig", "StageDef", "register_stage"]
