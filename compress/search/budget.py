"""Search budgets: parameters, FLOPs (torch's own flop counter) and latency predicted for a device profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch.utils.flop_counter import FlopCounterMode

from compress.config import Strict
from compress.models.task_model import TaskModel


class SearchBudget(Strict):
    """Hard limits every candidate must meet (give at least one)."""

    max_params: float | None = Field(None, gt=0, description="Most parameters, e.g. 5e6.")
    max_mflops: float | None = Field(
        None, gt=0, description="Most MFLOPs per example (torch.utils.flop_counter, batch 1, `sequence` tokens)."
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="Most latency in ms (the `percentile`) on `device` (batch 1, `sequence` tokens), of "
        "the ONNX graph in `precision`.",
    )  # fmt: skip
    device: str = Field("x86-cpu", description="Device profile for `max_latency_ms` (name or YAML path).")
    percentile: Literal["p50", "p90"] = Field("p50", description="The latency percentile `max_latency_ms` limits.")
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="The graph whose latency counts: `fp32` (the export) or `int8` (Transformer spaces: the int8 "
        "graph the device's runtime deploys, onnxruntime's fused dynamic int8 or OpenVINO's static QDQ, so "
        "quantization's gain is measured per candidate).",
    )
    sequence: int = Field(
        128,
        gt=0,
        description="Sequence length for FLOPs and latency (text models; default: `deploy.sequence`, else 128).",
    )

    @model_validator(mode="after")
    def _some_limit(self) -> SearchBudget:
        if self.max_params is None and self.max_mflops is None and self.max_latency_ms is None:
            raise ValueError("give at least one of max_params, max_mflops, max_latency_ms")
        return self


@dataclass
class Cost:
    params: int
    mflops: float
    latency_ms: float | None = None
    measured_ms: float | None = None
    extra: dict = field(default_factory=dict)

    def violations(self, budget: SearchBudget) -> list[str]:
        out = []
        if budget.max_params is not None and self.params > budget.max_params:
            out.append(f"params {self.params:,} > {budget.max_params:,.0f}")
        if budget.max_mflops is not None and self.mflops > budget.max_mflops:
            out.append(f"MFLOPs {self.mflops:.1f} > {budget.max_mflops:g}")
        if (
            budget.max_latency_ms is not None
            and self.latency_ms is not None
            and self.latency_ms > budget.max_latency_ms
        ):
            out.append(f"predicted latency {self.latency_ms:.3f} ms > {budget.max_latency_ms:g} ms")
        return out


def dummy_inputs(model: TaskModel, sequence: int, image_shape: tuple[int, ...] | None) -> dict[str, torch.Tensor]:
    """One input of ``sequence`` tokens, or of the data's per-example shape, as the model's family describes it."""
    return model.spec_of_inputs().dummy(sequence, image_shape)


def count_mflops(model: TaskModel, inputs: dict[str, torch.Tensor]) -> float:
    """FLOPs of one forward pass, counted by torch.utils.flop_counter (matmul/conv/attention kernels)."""
    model.module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.logits(inputs)
    return counter.get_total_flops() / 1e6


def static_cost(model: TaskModel, sequence: int, image_shape: tuple[int, ...] | None) -> Cost:
    return Cost(model.num_params(), count_mflops(model, dummy_inputs(model, sequence, image_shape)))
