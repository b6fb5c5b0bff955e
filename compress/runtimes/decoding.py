"""Running a causal LM's KV-cache graph on any runtime: the graph's input/output names, the cache layout, and
`CachedDecoder` (prefill, then one token at a time). Evaluation and the exporters both use it; it imports no
model code (a runtime runs files).

The graph takes ``input_ids (batch, sequence)``, ``attention_mask (batch, past + sequence)`` and, per layer,
``past.<i>.key`` / ``past.<i>.value`` ``(batch, kv_heads, past, head_dim)``; it returns ``logits (batch,
sequence, vocabulary)`` and ``present.<i>.key`` / ``present.<i>.value`` with the new tokens appended."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # a session: feeds -> every output, in graph order


@dataclass(frozen=True)
class CacheLayout:
    """The KV cache of a causal LM: its layers, each layer's key/value heads (pruned layers differ), head size."""

    layers: int
    kv_heads: list[int]
    head_dim: int

    def as_info(self) -> dict[str, Any]:
        return {"layers": self.layers, "kv_heads": list(self.kv_heads), "head_dim": self.head_dim}


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


class CachedDecoder:
    """Runs a KV-cache graph (any runtime's session as ``run``): the prompt, then one token at a time."""

    def __init__(self, run: Run, layout: CacheLayout) -> None:
        self.run, self.layout = run, layout
        self.past_names = io_names(layout.layers)[0][2:]

    def empty(self, batch: int) -> list[np.ndarray]:
        kv, dim = self.layout.kv_heads, self.layout.head_dim
        return [np.zeros((batch, kv[i // 2], 0, dim), np.float32) for i in range(len(self.past_names))]

    def forward(self, ids: np.ndarray, mask: np.ndarray, cache: list[np.ndarray]) -> tuple[np.ndarray, list]:
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        feeds |= dict(zip(self.past_names, cache, strict=True))
        out = self.run(feeds)
        return out[0], out[1:]

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], list[np.ndarray]]:
        """Greedy continuation of ``prompt``: the tokens, and the logits of each step (prefill's last first)."""
        ids = np.array([prompt], np.int64)
        logits, cache = self.forward(ids, np.ones_like(ids), self.empty(1))
        steps, tokens, total = [logits[0, -1]], [], len(prompt)
        for _ in range(new_tokens):
            token = int(steps[-1].argmax())
            tokens.append(token)
            total += 1
            logits, cache = self.forward(np.array([[token]]), np.ones((1, total), np.int64), cache)
            steps.append(logits[0, -1])
        return tokens, steps


def decoder_runner(runtime: str, path: Path, layout: CacheLayout) -> Any:
    """A `CachedDecoder` over a KV-cache graph on ``runtime``, or a `StaticCacheDecoder` over an ExecuTorch
    program (its cache lives inside the program)."""
    if runtime == "executorch":
        from compress.runtimes.executorch import StaticCacheDecoder

        return StaticCacheDecoder(path)
    from compress.runtimes.base import get_runtime

    return CachedDecoder(get_runtime(runtime).predictor(path, threads=None, provider=None).outputs, layout)
