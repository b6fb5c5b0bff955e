"""Distillation losses: plain functions (`functional`) and the registered, configurable terms (`terms`)."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from compress.losses import attention as _attention  # noqa: F401 - registers attention_map, attention_output
from compress.losses import relations as _relations  # noqa: F401 - registers sinkd, rkd
from compress.losses import sequence as _sequence  # noqa: F401 - registers fkl, rkl, skl, srkl, jsd, taid
from compress.losses.terms import LOSSES, Captured, LossConfig, LossTerm, build_terms, default_losses

__all__ = ["LOSSES", "Captured", "LossConfig", "LossTerm", "build_terms", "default_losses", "loss_config_union"]


def loss_config_union() -> object:
    """The discriminated union of every registered loss config (rebuilt when losses are added)."""
    configs = tuple(d.config for _, d in LOSSES.items())
    return Annotated[Union[configs], Field(discriminator="name")]  # noqa: UP007
