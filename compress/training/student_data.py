"""Student-generated sequences for causal-LM distillation: GKD's on-policy batches and DistiLLM's adaptive
off-policy replay buffer.

- **on_policy** (Agarwal et al., 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated
  Mistakes", GKD): with probability `fraction` (GKD's lambda) a training batch is replaced by the student's own
  continuations of its prompts (the first tokens of each block), which the teacher then scores: the student
  learns where its own samples go wrong.
- **adaptive** (Ko et al., 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models"): the
  probability of a student-generated batch starts at `fraction` and rises by `fraction_step` (up to
  `max_fraction`) every time the dev metric fails to improve; generated sequences go into a replay buffer, and a
  student-data step reuses buffered sequences with probability `reuse`, generating afresh otherwise (cheaper
  than generating every time).

Generation samples from the student's own distribution (temperature 1 by default) with Hugging Face `generate`,
without stopping at an end-of-text token, so every generated sequence has the same length. The random draws
come from torch's generator, so a resumed run draws the same; the replay buffer itself is not checkpointed (a
resumed adaptive run refills it).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field, model_validator

from compress.config import Strict
from compress.data.dataset import Batch

log = logging.getLogger("compress")


class StudentDataConfig(Strict):
    """Train on the student's own continuations some of the time (causal LMs): GKD's on-policy batches or
    DistiLLM's adaptive off-policy replay buffer."""

    mode: Literal["on_policy", "adaptive"] = Field(
        "on_policy",
        description="`on_policy`: a fixed share of batches is generated afresh by the student (GKD). `adaptive`: "
        "the share rises when the dev metric stops improving, and generated sequences are reused from a replay "
        "buffer (DistiLLM).",
    )
    fraction: float = Field(
        0.5, ge=0, le=1, description="Probability that a step trains on student-generated sequences (GKD's lambda; "
        "the starting value for `adaptive`).",
    )  # fmt: skip
    max_fraction: float = Field(0.8, ge=0, le=1, description="`adaptive`: the largest probability.")
    fraction_step: float = Field(
        0.1, ge=0, le=1, description="`adaptive`: added to the probability each time the dev metric does not improve."
    )
    reuse: float = Field(
        0.5, ge=0, lt=1, description="`adaptive`: probability that a student-data step samples the replay buffer "
        "instead of generating.",
    )  # fmt: skip
    buffer: int = Field(512, gt=0, description="`adaptive`: sequences kept in the replay buffer (oldest dropped).")
    prompt: int = Field(32, gt=0, description="Prompt tokens taken from the start of each training block.")
    new_tokens: int = Field(32, gt=0, description="Tokens the student generates after each prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the student's generation.")

    @model_validator(mode="after")
    def _range(self) -> StudentDataConfig:
        if self.mode == "adaptive" and self.fraction > self.max_fraction:
            raise ValueError(f"fraction {self.fraction} is above max_fraction {self.max_fraction}")
        return self


class StudentData:
    """Decides, per training batch, whether the step trains on student-generated sequences, and makes them."""

    def __init__(self, cfg: StudentDataConfig, student: torch.nn.Module, pad_id: int, block: int) -> None:
        self.cfg, self.student, self.pad_id = cfg, student, pad_id
        self.fraction = cfg.fraction
        self.buffer: list[torch.Tensor] = []
        self.best: float | None = None
        self.generated = self.reused = self.steps = 0
        if cfg.prompt + cfg.new_tokens > block:
            log.warning("student data: prompt %d + new tokens %d exceed the block length %d; sequences are longer "
                        "than the training blocks", cfg.prompt, cfg.new_tokens, block)  # fmt: skip

    def __call__(self, batch: Batch) -> Batch:
        """The batch itself, or (with the current probability) student-generated sequences in its place."""
        self.steps += 1
        if float(torch.rand(())) >= self.fraction:
            return batch
        n = batch["input_ids"].shape[0]
        if self.cfg.mode == "adaptive" and len(self.buffer) >= n and float(torch.rand(())) < self.cfg.reuse:
            picks = torch.randperm(len(self.buffer))[:n].tolist()
            ids = torch.stack([self.buffer[i] for i in picks]).to(batch["input_ids"].device)
            self.reused += 1
        else:
            ids = self.generate(batch)
            self.generated += 1
            if self.cfg.mode == "adaptive":
                self.buffer.extend(row.cpu() for row in ids)
                del self.buffer[: max(0, len(self.buffer) - self.cfg.buffer)]
        labels = torch.full_like(ids, -100)
        labels[:, :-1] = ids[:, 1:]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "generated": ids}

    @torch.no_grad()
    def generate(self, batch: Batch) -> torch.Tensor:
        """The student's continuations of each block's first tokens (as many as the shortest block allows)."""
        real = batch["attention_mask"].sum(1)
        prompt = max(1, min(self.cfg.prompt, int(real.min()) - 1))
        ids = batch["input_ids"][:, :prompt]
        was_training = self.student.training
        self.student.eval()
        try:
            out = self.student.generate(  # type: ignore[operator]
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=self.cfg.temperature, top_k=0, top_p=1.0, max_new_tokens=self.cfg.new_tokens,
                min_new_tokens=self.cfg.new_tokens, pad_token_id=self.pad_id, use_cache=True,
            )  # fmt: skip
        finally:
            self.student.train(was_training)
        return out

    def observe(self, value: float, higher_is_better: bool) -> None:
        """`adaptive`: after each dev evaluation, raise the probability when the metric did not improve."""
        if self.cfg.mode != "adaptive":
            return
        improved = self.best is None or (value > self.best if higher_is_better else value < self.best)
        if improved:
            self.best = value
        else:
            self.fraction = min(self.cfg.max_fraction, self.fraction + self.cfg.fraction_step)
            log.info("student data: the dev metric did not improve; student-generated batches now %.0f%%",
                     100 * self.fraction)  # fmt: skip

    def summary(self) -> dict[str, float | int | str]:
        return {"mode": self.cfg.mode, "final_fraction": self.fraction, "generated_batches": self.generated,
                "reused_batches": self.reused, "steps": self.steps}  # fmt: skip
