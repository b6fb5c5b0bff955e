"""Tang et al. (2019) augmentation: each rule checked by hand on seeded draws, and through `distill`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from safetensors.torch import load_file

from compress import pipeline
from compress.data.augment import Augment, augment_texts
from compress.errors import RecipeError
from tests.conftest import TINY_FINETUNE, digits_recipe_head, text_recipe_head, write_recipe

TEXTS = ["a gripping , funny film", "slow and dull", "one of the year 's best movies , by far"]


def test_masking_replaces_words_by_the_mask_token_and_drops_duplicates() -> None:
    out, sources = augment_texts(TEXTS, Augment(copies=3, mask=1.0, replace=0, ngram=0), mask_token="[MASK]")
    assert out == ["[MASK] " * 4 + "[MASK]", "[MASK] [MASK] [MASK]", " ".join(["[MASK]"] * 10)]  # one copy each
    assert sources == [0, 1, 2]
    out, _ = augment_texts(TEXTS, Augment(copies=20, mask=0.5, replace=0, ngram=0), mask_token="[MASK]", seed=1)
    for text in out:  # every word is the source's word or the mask, in place; no copy equals its source
        src = next(t for t in TEXTS if len(t.split()) == len(text.split()))
        assert all(w in (s, "[MASK]") for w, s in zip(text.split(), src.split(), strict=True))
        assert text != src
    assert len(out) == len(set(out))


def test_ngram_sampling_keeps_a_contiguous_run_of_at_most_max_ngram_words() -> None:
    out, sources = augment_texts(TEXTS, Augment(copies=30, mask=0, replace=0, ngram=1.0, max_ngram=2),
                                 mask_token="[MASK]")  # fmt: skip
    assert out
    for text, i in zip(out, sources, strict=True):
        words, src = text.split(), TEXTS[i].split()
        assert 1 <= len(words) <= 2
        assert any(src[j : j + len(words)] == words for j in range(len(src)))
    assert {len(t.split()) for t in out} == {1, 2}


def test_replacement_draws_training_words_by_unigram_frequency() -> None:
    texts = ["x x x y"] * 50  # x: 3/4 of the words
    out, _ = augment_texts(texts, Augment(copies=10, mask=0, replace=1.0, ngram=0), mask_token="[MASK]")
    words = Counter(w for t in out for w in t.split())
    assert set(words) == {"x", "y"}
    assert 0.65 < words["x"] / sum(words.values()) < 0.85  # 3/4, less the duplicates dropped (mostly "x x x x")


def test_augmentation_is_seeded() -> None:
    cfg = Augment(copies=4)
    assert augment_texts(TEXTS, cfg, mask_token="[MASK]") == augment_texts(TEXTS, cfg, mask_token="[MASK]")
    assert augment_texts(TEXTS, cfg, mask_token="[MASK]") != augment_texts(TEXTS, cfg, mask_token="[MASK]", seed=1)


def test_bad_augmentation_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="mask \\+ replace is 1.2"):
        Augment(copies=1, mask=0.6, replace=0.6)
    with pytest.raises(ValidationError):
        Augment(copies=0)


AUGMENTED = (
    text_recipe_head("tiny-augment")
    + "stages:\n"
    + TINY_FINETUNE
    + """  - stage: distill
    student:
      bert: {{layers: 1}}
    max_steps: 30
    eval_every: 10
    batch_size: 16
    lr: 1.0e-3
    augment: {{copies: 2}}
    losses:
      - {{name: kd, temperature: 2.0}}
      - {{name: ce, weight: 0.5}}
"""
)


def test_distill_trains_on_the_teacher_labelled_augmented_split(
    tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path
) -> None:
    recipe = write_recipe(tmp_path, AUGMENTED.format(data=sst2_slice, teacher=tiny_bert_dir))
    student = pipeline.run(recipe, tmp_path / "out").artifacts["student"]
    info = student.info["teacher_cache"]["augment"]
    assert info["examples"] == 256 and info["copies"] == 2
    assert 256 < info["augmented"] <= 512  # duplicates dropped: short phrases have few distinct copies
    (cache,) = (tmp_path / "out" / ".cache" / "teacher-logits").glob("*.safetensors")
    assert load_file(str(cache))["logits"].shape == (256 + info["augmented"], 2)  # the teacher labelled them all
    history = student.info["training"]["history"]
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]


def test_augmenting_data_that_is_not_text_is_refused_before_anything_runs(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, digits_recipe_head("digits-augment") + """  - stage: distill
    student:
      cnn: {widths: [4, 8], block: plain}
    max_steps: 5
    augment: {copies: 1}
""")  # fmt: skip
    with pytest.raises(RecipeError, match=r"stages\[1\]\.augment: augmentation rewrites sentences"):
        pipeline.run(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("01-*"))
