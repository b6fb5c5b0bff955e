"""Search spaces as data: the choices a recipe declares, and how to sample, mutate and cross candidates.

A candidate ("arch") is a plain JSON-able dict, so it can be hashed, cached, logged and written to the report.
CNN archs become a built-in `CnnSpec`; Transformer archs are uniform encoders ``{layers, hidden, heads, ffn}``
whose head size is the teacher's (so ``heads`` and ``hidden`` are independent choices).
"""

from __future__ import annotations

import itertools
import json
import random
from typing import Any, Literal

from pydantic import Field, field_validator

from compress.config import Strict
from compress.models.cnn import CnnSpec

Arch = dict[str, Any]


def arch_key(arch: Arch) -> str:
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def _choices(v: list) -> list:
    if not v:
        raise ValueError("give at least one choice")
    if len(set(map(str, v))) != len(v):
        raise ValueError(f"choices repeat: {v}")
    return sorted(v) if all(isinstance(x, int) for x in v) else v


class CnnSpace(Strict):
    """Built-in CNN students: a number of stages, each with its own depth and width; one block type,
    kernel and expansion ratio per candidate."""

    kind: Literal["cnn"] = Field("cnn", description="Space type (inferred from the keys when omitted).")
    block: list[Literal["plain", "resnet", "mbv2"]] = Field(["resnet", "mbv2"], description="Block types.")
    stages: list[int] = Field([2, 3], description="Number of stages (each after the first halves the resolution).")
    depth: list[int] = Field([1, 2, 3], description="Blocks per stage (chosen per stage).")
    width: list[int] = Field([8, 16, 24, 32, 48, 64], description="Channels per stage (chosen per stage).")
    kernel: list[int] = Field([3, 5], description="Convolution kernel sizes (odd).")
    expansion: list[int] = Field([2, 4, 6], description="Expansion ratios of `mbv2` blocks.")

    _v = field_validator("block", "stages", "depth", "width", "kernel", "expansion")(_choices)

    @field_validator("stages", "depth", "width", "expansion")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError(f"choices must be positive, got {v}")
        return v

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: list[int]) -> list[int]:
        if any(k < 1 or k % 2 == 0 for k in v):
            raise ValueError(f"kernel sizes must be positive odd numbers, got {v}")
        return v

    def sample(self, rng: random.Random) -> Arch:
        n = rng.choice(self.stages)
        block = rng.choice(self.block)
        return {
            "block": block,
            "kernel": rng.choice(self.kernel),
            "expansion": rng.choice(self.expansion) if block == "mbv2" else 1,
            "widths": sorted(rng.choice(self.width) for _ in range(n)),
            "depths": [rng.choice(self.depth) for _ in range(n)],
        }

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        out = json.loads(arch_key(arch))
        if rng.random() < prob:
            out["block"] = rng.choice(self.block)
        if rng.random() < prob:
            out["kernel"] = rng.choice(self.kernel)
        out["expansion"] = (
            (rng.choice(self.expansion) if rng.random() < prob or out["expansion"] == 1 else out["expansion"])
            if out["block"] == "mbv2"
            else 1
        )
        if rng.random() < prob:
            n = rng.choice(self.stages)
            while len(out["widths"]) < n:
                out["widths"].append(rng.choice(self.width))
                out["depths"].append(rng.choice(self.depth))
            out["widths"], out["depths"] = out["widths"][:n], out["depths"][:n]
        out["widths"] = sorted(rng.choice(self.width) if rng.random() < prob else w for w in out["widths"])
        out["depths"] = [rng.choice(self.depth) if rng.random() < prob else d for d in out["depths"]]
        return out

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        donor = {k: (a if rng.random() < 0.5 else b)[k] for k in ("block", "kernel")}
        stages = a if rng.random() < 0.5 else b
        child = {**donor, "widths": list(stages["widths"]), "depths": list(stages["depths"])}
        child["expansion"] = max(a["expansion"], b["expansion"], 2) if child["block"] == "mbv2" else 1
        if child["block"] == "mbv2" and child["expansion"] not in self.expansion:
            child["expansion"] = self.expansion[0]
        return child

    def size(self) -> int:
        per_stage = len(self.depth) * len(self.width)
        blocks = sum(len(self.expansion) if b == "mbv2" else 1 for b in self.block)
        return blocks * len(self.kernel) * sum(per_stage**n for n in self.stages)

    def smallest_candidates(self) -> list[Arch]:
        """The smallest candidate of each block type: if none meets a budget, no candidate does."""
        n = min(self.stages)
        return [
            {
                "block": block,
                "kernel": min(self.kernel),
                "expansion": min(self.expansion) if block == "mbv2" else 1,
                "widths": [min(self.width)] * n,
                "depths": [min(self.depth)] * n,
            }
            for block in self.block
        ]

    def enumerable(self) -> list[Arch] | None:
        """Every candidate, when the space lists them (None: the search samples them)."""
        return None

    @staticmethod
    def to_spec(arch: Arch) -> CnnSpec:
        return CnnSpec(
            widths=arch["widths"],
            depths=arch["depths"],
            kernel=arch["kernel"],
            block=arch["block"],
            expansion=max(1, arch["expansion"]),
        )

    @staticmethod
    def describe(arch: Arch) -> str:
        exp = f" x{arch['expansion']}" if arch["block"] == "mbv2" else ""
        return f"{arch['block']}{exp} k{arch['kernel']} widths {arch['widths']} depths {arch['depths']}"


class TransformerSpace(Strict):
    """Uniform Transformer encoders of the teacher's family. Unset choices are derived from the teacher:
    layers 1/3 to 2/3 of its depth, hidden 1/2 to all of its width, heads and FFN 1/2 to all of its own."""

    kind: Literal["transformer"] = Field("transformer", description="Space type (inferred from the keys when omitted).")
    layers: list[int] | None = Field(None, description="Encoder layers.")
    hidden: list[int] | None = Field(None, description="Hidden sizes (multiples of the teacher's head size).")
    heads: list[int] | None = Field(None, description="Attention heads (each of the teacher's head size).")
    ffn: list[int] | None = Field(None, description="FFN intermediate sizes.")

    _v = field_validator("layers", "hidden", "heads", "ffn")(lambda v: None if v is None else _choices(v))

    @field_validator("layers", "hidden", "heads", "ffn")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(x < 1 for x in v):
            raise ValueError(f"choices must be positive, got {v}")
        return v

    def choices(self) -> dict[str, list[int]]:
        assert self.layers and self.hidden and self.heads and self.ffn, "resolve the space against the teacher"
        return {"layers": self.layers, "hidden": self.hidden, "heads": self.heads, "ffn": self.ffn}

    def sample(self, rng: random.Random) -> Arch:
        return {k: rng.choice(v) for k, v in self.choices().items()}

    def mutate(self, arch: Arch, rng: random.Random, prob: float) -> Arch:
        return {k: rng.choice(v) if rng.random() < prob else arch[k] for k, v in self.choices().items()}

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return {k: (a if rng.random() < 0.5 else b)[k] for k in self.choices()}

    def size(self) -> int:
        n = 1
        for v in self.choices().values():
            n *= len(v)
        return n

    def all(self) -> list[Arch]:
        keys = list(self.choices())
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.choices().values())]

    def largest(self) -> Arch:
        return {k: max(v) for k, v in self.choices().items()}

    def smallest(self) -> Arch:
        return {k: min(v) for k, v in self.choices().items()}

    def smallest_candidates(self) -> list[Arch]:
        return [self.smallest()]

    def enumerable(self) -> list[Arch] | None:
        return self.all()

    def split(self, k: int) -> list[TransformerSpace]:
        """K compact sub-spaces (AutoDistil): contiguous groups of the hidden sizes, smallest first."""
        hidden = self.choices()["hidden"]
        k = max(1, min(k, len(hidden)))
        bounds = [round(i * len(hidden) / k) for i in range(k + 1)]
        return [self.model_copy(update={"hidden": hidden[bounds[i] : bounds[i + 1]]}) for i in range(k)]

    @staticmethod
    def describe(arch: Arch) -> str:
        return f"L{arch['layers']} H{arch['hidden']} A{arch['heads']} F{arch['ffn']}"


Space = CnnSpace | TransformerSpace
