"""bitsandbytes teachers: int8 runs on CPU as a frozen distillation teacher; what cannot run says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import CompressError, ModelError
from compress.families import load as load_model
from compress.models import bnb
from tests.conftest import TINY_FINETUNE, text_recipe_head, write_recipe

RECIPE = (
    text_recipe_head("bnb-teacher").replace("  hf: {teacher}\n", "  hf: {teacher}\n  bitsandbytes: int8\n")
    + """stages:
  - stage: distill
    student:
      bert: {{layers: 2}}
    max_steps: 6
    batch_size: 16
    lr: 1.0e-3
  - stage: export
    int8: []
"""
)


def test_int8_teacher_distils_a_float_student(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    result = pipeline.run(write_recipe(tmp_path, RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir)), tmp_path / "o")
    teacher = load_model(result.artifacts["teacher"].path)  # reloads with its int8 weights
    assert bnb.is_bnb(teacher.module)
    assert type(teacher.module.bert.encoder.layer[0].attention.self.query).__name__ == "Linear8bitLt"
    student = load_model(result.artifacts["student"].path)
    assert not bnb.is_bnb(student.module)
    assert "student.onnx" in result.artifacts and "teacher.onnx" not in result.artifacts  # teacher skipped


def test_int8_teacher_cannot_be_finetuned(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir).replace(
        "stages:\n", "stages:\n  - stage: finetune\n    max_steps: 2\n", 1
    )
    with pytest.raises(CompressError, match="loaded with bitsandbytes .* cannot be trained"):
        pipeline.run(write_recipe(tmp_path, text), tmp_path / "o")


@pytest.fixture(scope="module")
def bert64_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    """The tiny BERT at width 64: bitsandbytes' CPU NF4 kernels need input widths that are multiples of 64."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert64")
    cfg = BertConfig(vocab_size=AutoTokenizer.from_pretrained(tiny_bert_dir).vocab_size, hidden_size=64,
                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                     num_labels=2)  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


def test_nf4_teacher_runs_on_cpu(bert64_dir: Path) -> None:
    """bitsandbytes >= 0.50 (what we require) has CPU kernels for NF4 too: the probe forward passes and the
    layers are really 4-bit."""
    module = bnb.load(str(bert64_dir), "nf4", 2)
    assert type(module.bert.encoder.layer[0].output.dense).__name__ == "Linear4bit"


def test_nf4_widths_the_cpu_kernels_cannot_run_are_named(tiny_bert_dir: Path) -> None:
    from bitsandbytes.nn import Linear4bit

    if not Linear4bit(64, 64).support_avx512bf16_for_cpu:
        pytest.skip("this CPU has no AVX-512 BF16: bitsandbytes runs NF4 at any width here")
    with pytest.raises(ModelError, match=r"teacher.bitsandbytes: nf4 on this CPU .* multiple of 64 inputs .*; "
                                         r"bert.encoder.layer.0.attention.self.query \(32 -> 32\)"):  # fmt: skip
        bnb.load(str(tiny_bert_dir), "nf4", 2)


def test_bitsandbytes_mode_that_cannot_run_is_a_clear_error(tiny_bert_dir: Path) -> None:
    with pytest.raises(
        ModelError, match=r"teacher.bitsandbytes: nf4 cannot run .*tokenizer.json on cpu .*Hugging Face model folder"
    ):
        bnb.load(str(tiny_bert_dir / "tokenizer.json"), "nf4", 2)


def test_int8_weights_dequantize_to_the_float_ones(tiny_bert_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    ref = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).state_dict()
    got = bnb.float_state_dict(bnb.load(str(tiny_bert_dir), "int8", 2))
    assert set(got) == set(ref)  # the float model's layout: no SCB / weight_format entries
    w = "bert.encoder.layer.0.attention.self.query.weight"
    assert got[w].dtype == torch.float32
    assert (got[w] - ref[w]).abs().max() <= ref[w].abs().amax(1).max() / 127  # within one int8 step per row


DEPLOY = (
    text_recipe_head("bnb-deploy")
    + "stages:\n"
    + TINY_FINETUNE
    + """  - stage: quantize
    method: bitsandbytes
    source: teacher
    weights: {{bits: {bits}}}
"""
)


def test_bitsandbytes_int8_deployment_target(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, DEPLOY.format(data=sst2_slice, teacher=tiny_bert_dir, bits=8))
    result = pipeline.run(recipe, tmp_path / "o")
    art = result.artifacts["teacher.bnb-int8"]
    assert art.kind == "model" and art.precision == "bnb-int8" and art.parent == "teacher"
    reloaded = load_model(art.path)  # from_pretrained brings the int8 weights back
    assert type(reloaded.module.bert.encoder.layer[0].output.dense).__name__ == "Linear8bitLt"
    assert art.metrics["top1_agreement_with_fp32"] >= 0.9
    from safetensors import safe_open

    with safe_open(str(art.path / "model.safetensors"), "pt") as fh:  # stored in int8, not quantized at load
        assert fh.get_tensor("bert.encoder.layer.0.output.dense.weight").dtype == torch.int8


def test_bitsandbytes_nf4_deployment_target(tmp_path: Path, bert64_dir: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, DEPLOY.format(data=sst2_slice, teacher=bert64_dir, bits=4))
    art = pipeline.run(recipe, tmp_path / "o").artifacts["teacher.bnb-nf4"]
    assert art.precision == "bnb-nf4" and art.metrics["top1_agreement_with_fp32"] >= 0.8
    reloaded = load_model(art.path)
    assert type(reloaded.module.bert.encoder.layer[0].output.dense).__name__ == "Linear4bit"
