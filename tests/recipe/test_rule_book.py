"""One rule book: each stage config checks itself against the chain (the teacher's family, the data, the stages
before it), and `validate` refuses every problem at once, before any work, naming each key."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError
from tests.conftest import lm_recipe_head, write_recipe


def test_validate_refuses_every_method_a_causal_lm_has_no_implementation_of(tmp_path: Path, pycode_slice: Path) -> None:
    text = lm_recipe_head("x", pycode_slice) + """
  - stage: export
    int8: [dynamic, static]
    executorch: {precisions: [fp32, int8]}
  - stage: quantize
    method: budget
    source: teacher
    accuracy_drop: 1.0
  - stage: quantize
    source: teacher
    weights: {bits: 8}
  - stage: quantize
    method: ptq
    source: teacher
    int8: [static]
  - stage: prune
    method: torch_pruning
    target: {flops: 0.5}
"""
    with pytest.raises(CompressError) as info:
        pipeline.validate(write_recipe(tmp_path, text))
    message = str(info.value)
    for expected in (
        "stages[1].int8: static int8 does not apply to 'teacher', a causal LM",
        "stages[1].executorch.precisions: int8 ExecuTorch programs of causal LMs are not built",
        "stages[2].method: budget does not apply to this teacher (llama: LlamaSpec, decoder family) yet (int8 picked "
        "by an accuracy budget",
        "stages[3].weights.bits: 8-bit QAT does not apply to 'teacher' (decoder family); it trains 4-bit weights",
        "stages[4].int8: static int8 does not apply to 'teacher', a causal LM",
        "stages[5].method: torch_pruning does not apply to this teacher (llama: LlamaSpec, decoder family); use "
        "`method: dphubert`",
    ):
        assert expected in message, (expected, message)
    assert not (tmp_path / "out").exists()


def test_a_latency_target_on_a_family_that_is_not_timed_is_refused(tmp_path: Path) -> None:
    text = """
name: x
data: {format: sklearn_digits}
teacher: {cnn: {widths: [8]}}
stages:
  - stage: prune
    target: {latency_ms: 1.0, device: x86-cpu}
"""
    expected = r"stages\[0\].target: latency targets time .*; this teacher \(cnn: CnnSpec, cnn family\) is not timed"
    with pytest.raises(CompressError, match=expected):
        pipeline.validate(write_recipe(tmp_path, text))
