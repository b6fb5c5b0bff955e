"""Text augmentation for distillation: new training inputs for the teacher to label, so that a small student learns
the teacher's function on more of the input space than the labelled examples cover.

The rules are those of Tang et al., "Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"
(2019, section 3.3), applied to whitespace-separated words. For each word, draw X ~ U[0, 1]:
- X < mask: the word becomes the tokenizer's mask token (masking);
- mask <= X < mask + replace: the word becomes a word of the training split drawn by unigram frequency.
  Tang et al. draw it among the words with the same part-of-speech tag; no tagger is installed here, so the draw
  is over every word (this is where we depart from the paper);
then, with probability `ngram`, the example is cut to a random n-gram of its words, n uniform in 1..max_ngram
(n-gram sampling). Each example is augmented `copies` times; duplicates of the original, or of an earlier copy,
are dropped, as in the paper. The teacher labels every augmented example (`distill` caches its logits).
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import accumulate

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Augment(BaseModel):
    """Tang et al. (2019) augmentation of the training split; see `compress/data/augment.py`."""

    model_config = ConfigDict(extra="forbid")

    copies: int = Field(
        ..., ge=1, le=100, description="Augmented examples drawn per training example (duplicates are dropped)."
    )
    mask: float = Field(0.1, ge=0, le=1, description="Per word: probability of the tokenizer's mask token.")
    replace: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Per word: probability of a training-split word drawn by unigram frequency (Tang et al. keep the "
        "part of speech; no tagger here).",
    )
    ngram: float = Field(0.25, ge=0, le=1, description="Per example: probability of cutting it to a random n-gram.")
    max_ngram: int = Field(5, ge=1, description="Longest n-gram kept by n-gram sampling.")
    seed: int = Field(0, description="Seed of the augmentation (the recipe's seed is added to it).")

    @model_validator(mode="after")
    def _one_draw(self) -> Augment:
        if self.mask + self.replace > 1:
            raise ValueError(f"mask + replace is {self.mask + self.replace:g}; they share one draw per word, so "
                             "their sum must be at most 1")  # fmt: skip
        return self


def augment_texts(texts: list[str], config: Augment, *, mask_token: str, seed: int = 0) -> tuple[list[str], list[int]]:
    """Augmented examples and, for each, the index of the text it came from (in order of the sources)."""
    rng = random.Random(config.seed + seed)
    counts = Counter(w for t in texts for w in t.split())
    vocab, cumulative = list(counts), list(accumulate(counts.values()))
    out: list[str] = []
    sources: list[int] = []
    for i, text in enumerate(texts):
        words = text.split()
        if not words:
            continue
        seen = {" ".join(words)}
        for _ in range(config.copies):
            new = []
            for w in words:
                x = rng.random()
                if x < config.mask:
                    new.append(mask_token)
                elif x < config.mask + config.replace:
                    new.append(rng.choices(vocab, cum_weights=cumulative)[0])
                else:
                    new.append(w)
            if rng.random() < config.ngram:
                n = rng.randint(1, min(config.max_ngram, len(new)))
                start = rng.randint(0, len(new) - n)
                new = new[start : start + n]
            joined = " ".join(new)
            if joined not in seen:
                seen.add(joined)
                out.append(joined)
                sources.append(i)
    return out, sources
