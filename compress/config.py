"""Base classes of every recipe section, stage config and loss config: below both the recipe and the stages."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 100  # names become file and folder names, with suffixes added: well under the usual 255-byte limit


def check_name(value: str) -> str:
    """A name that becomes a file or folder name inside the output folder: never a path, never too long."""
    if not NAME_PATTERN.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{value!r}: use letters, digits, '.', '_' and '-' only, starting with a letter or digit (it names a "
            "file or folder inside the output folder; paths are not allowed)"
        )
    if len(value) > MAX_NAME:
        raise ValueError(f"{len(value)} characters; at most {MAX_NAME} (it names a file or folder)")
    return value


ArtifactName = Annotated[str, AfterValidator(check_name)]


class Strict(BaseModel):
    """A recipe section: unknown keys are errors, never silent defaults; numbers must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=False, protected_namespaces=(), allow_inf_nan=False)


class TrainSchedule(Strict):
    """Optimiser and schedule shared by every stage that trains (AdamW, linear warm-up then decay)."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training split (fractions allowed).")
    max_steps: int | None = Field(
        None,
        gt=0,
        description="Optimiser steps. Alone, it sets the length (the data is passed over as often as needed); with "
        "`epochs` also given, the smaller of the two applies.",
    )
    batch_size: int = Field(32, gt=0, description="Training batch size.")
    eval_batch_size: int = Field(128, gt=0, description="Batch size for evaluation and teacher inference.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before linear decay to 0.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (null: no clipping).")
    eval_every: int | None = Field(
        None,
        gt=0,
        description="Evaluate on the dev split every N steps (default: once per epoch and at the end). "
        "The checkpoint with the best dev accuracy is kept.",
    )
    group_by_length: bool = Field(
        False,
        description="Text: batch examples of similar length (each shuffled window of 64 batches sorted by length, "
        "then the batches shuffled). Batches are padded to their longest example, so on SST-2 (13 tokens on average, "
        "random batches of 32 padded to 40) this trains on a third of the tokens; the batches are no longer "
        "uniformly mixed in length.",
    )


# ---- one config class per method ------------------------------------------------------------------------
METHOD_SIBLINGS: dict[type[BaseModel], list[type[BaseModel]]] = {}  # a method's config -> the stage's others


def method_union(default: str | None, *configs: type[BaseModel]) -> object:
    """A stage whose methods each have their own config class, chosen by the `method` key (``default`` when the
    recipe leaves it out; None: the recipe must name it): each class holds only its own keys, and
    `recipe/load.py` names the method a key of another method belongs to."""
    from typing import Any, Union

    from pydantic import Discriminator, Tag

    tags = {c: _literal(c) for c in configs}

    def method(value: Any) -> Any:
        return value.get("method", default) if isinstance(value, dict) else getattr(value, "method", None)

    for c in configs:
        METHOD_SIBLINGS[c] = [o for o in configs if o is not c]
    members = tuple(Annotated[c, Tag(tags[c])] for c in configs)
    return Annotated[Union[members], Discriminator(method)]  # noqa: UP007


def _literal(config: type[BaseModel]) -> str:
    from typing import get_args

    return str(get_args(config.model_fields["method"].annotation)[0])


# ---- where and how training runs ---------------------------------------------------------------------------
Precision = Literal["fp32", "bf16", "fp16"]
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


class TrainConfig(Strict):
    """Where and how every training stage trains (finetune, distill, prune, quantize qat, moefy, search
    autodistil). Launched under `torchrun` or `accelerate launch`, each process trains on its shard of every
    batch with PyTorch DDP (gloo on CPU, NCCL on GPUs); `batch_size` stays the global batch per optimiser step, so
    a run on 1 process and on N processes take the same steps and reuse each other's cached stages."""

    device: str = Field(
        "auto",
        pattern=f"^({DEVICE_PATTERN})$",
        description="auto (the GPU where there is one, else the CPU), cpu, cuda, cuda:N or mps. Under a launcher, "
        "`cuda` gives each process the GPU of its LOCAL_RANK.",
    )
    precision: Precision = Field(
        "fp32",
        description="Student training precision: fp32, bf16 (autocast) or fp16 (autocast with loss scaling; GPUs "
        "only). bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) falls back to fp32 with a warning: there "
        "it would only be slower.",
    )
    teacher_precision: Precision | None = Field(
        None, description="Precision of the teacher's forward passes (default: `precision`)."
    )
    gradient_accumulation: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimiser step and process: each process runs batch_size / (processes x "
        "gradient_accumulation) examples at a time; the optimiser step and its result do not change.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them (less memory, about a "
        "third more compute); Hugging Face models only.",
    )
    checkpoint_every: int | None = Field(
        200,
        gt=0,
        description="Save a training checkpoint every N optimiser steps in the stage's temporary folder; a re-run "
        "after a crash resumes from it (null: never).",
    )
