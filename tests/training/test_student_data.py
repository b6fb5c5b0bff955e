"""Student-generated sequences: GKD's on-policy batches and DistiLLM's adaptive replay buffer, on a tiny LLaMA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import CompressError
from compress.models.decoder import LlamaSpec, build_llama
from compress.training.student_data import StudentData, StudentDataConfig
from tests.conftest import lm_recipe_head, write_recipe

VOCAB = 60


@pytest.fixture
def student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_llama(LlamaSpec(layers=1, hidden=16, heads=2, ffn=32, positions=64), VOCAB, 1, 0)


def _batch(lengths: list[int]) -> dict[str, torch.Tensor]:
    from compress.data.lm import collate_blocks

    return collate_blocks([list(range(2, 2 + n)) for n in lengths], pad=1)


def test_on_policy_batches_are_the_student_s_continuations(student: torch.nn.Module) -> None:
    data = StudentData(StudentDataConfig(fraction=1.0, prompt=4, new_tokens=6), student, pad_id=1, block=16)
    batch = _batch([12, 9, 16])
    out = data(batch)
    assert out["input_ids"].shape == (3, 10) and "generated" in out
    assert torch.equal(out["input_ids"][:, :4], batch["input_ids"][:, :4])  # the prompts are kept
    assert int(out["input_ids"].max()) < VOCAB and bool(out["attention_mask"].all())
    assert out["labels"][:, :-1].tolist() == out["input_ids"][:, 1:].tolist()
    assert bool((out["labels"][:, -1] == -100).all())
    assert student.training  # generation leaves the training mode as it was
    never = StudentData(StudentDataConfig(fraction=0.0), student, pad_id=1, block=16)
    assert never(batch) is batch


def test_a_short_block_shortens_the_prompt(student: torch.nn.Module) -> None:
    data = StudentData(StudentDataConfig(fraction=1.0, prompt=8, new_tokens=3), student, pad_id=1, block=16)
    assert data(_batch([12, 3]))["input_ids"].shape == (2, 2 + 3)  # the 3-token block leaves a 2-token prompt


def test_adaptive_raises_the_share_when_dev_stalls_and_reuses_the_buffer(student: torch.nn.Module) -> None:
    cfg = StudentDataConfig(mode="adaptive", fraction=0.2, fraction_step=0.3, max_fraction=0.7, reuse=0.5, buffer=5,
                            prompt=3, new_tokens=3)  # fmt: skip
    data = StudentData(cfg, student, pad_id=1, block=16)
    data.observe(10.0, higher_is_better=False)
    data.observe(9.0, higher_is_better=False)
    assert data.fraction == 0.2  # improving: unchanged
    data.observe(9.5, higher_is_better=False)
    data.observe(9.4, higher_is_better=False)
    assert data.fraction == pytest.approx(0.7)  # two stalls, capped at max_fraction
    data.fraction = 1.0
    torch.manual_seed(0)
    for _ in range(12):
        data(_batch([8, 8]))
    assert data.generated > 0 and data.reused > 0 and len(data.buffer) == 5


def test_distillation_on_student_data_runs_and_reports(tmp_path: Path, pycode_slice: Path) -> None:
    text = lm_recipe_head("gkd", pycode_slice) + """  - stage: distill
    student: {decoder: {layers: 1}}
    max_steps: 10
    batch_size: 8
    lr: 5.0e-3
    eval_every: 5
    losses: [{name: jsd, beta: 0.5}]
    student_data: {mode: adaptive, fraction: 0.5, prompt: 16, new_tokens: 16}
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    info = result.artifacts["student"].info
    assert info["student_data"]["generated_batches"] > 0 and info["student_data"]["mode"] == "adaptive"
    assert result.artifacts["student"].metrics["perplexity"] < 512


def test_student_data_on_a_classifier_is_refused(tmp_path: Path) -> None:
    text = """
name: x
data: {format: sklearn_digits}
teacher: {cnn: {widths: [8]}}
stages:
  - stage: distill
    student: {cnn: {widths: [4]}}
    student_data: {fraction: 0.5}
"""
    with pytest.raises(CompressError, match=r"stages\[0\].student_data: student-generated sequences are for causal"):
        pipeline.validate(write_recipe(tmp_path, text))
