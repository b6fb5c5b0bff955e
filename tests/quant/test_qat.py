"""Quantization-aware distillation on a tiny BERT over real SST-2 slices: NNCF fake quantizers train, the QDQ
export runs integer kernels on onnxruntime and matches the fake-quantized PyTorch model."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress import pipeline
from compress.errors import CompressError
from compress.families import load as load_model
from compress.losses import build_terms
from compress.losses.attention import AttentionMapConfig, AttentionOutputConfig
from compress.losses.terms import KDConfig
from compress.models.task_model import TaskModel
from compress.quant import qat
from compress.training.distillation import distillation_step
from tests.conftest import TINY_FINETUNE, digits_recipe_head, text_recipe_head, write_recipe

RECIPE = (
    text_recipe_head("qat-sst2")
    + "stages:\n"
    + TINY_FINETUNE
    + """  - stage: quantize
    method: ptq
    source: teacher
    int8: [dynamic]
  - stage: quantize
    source: teacher
    max_steps: {steps}
    eval_every: {steps}
    batch_size: 16
    lr: 1.0e-4
    calibration_samples: 32
{extra}"""
)


def test_qat_distillation_exports_integer_qdq(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, steps=10, extra=""))
    result = pipeline.run(recipe, out=tmp_path / "out")
    ptq = result.artifacts["teacher.int8-dynamic.onnx"]
    assert ptq.info["integer_ops"] and ptq.parent == "teacher"
    art = result.artifacts["teacher.int8-qat.onnx"]
    info = art.info
    assert info["integer_kernels"].get("MatMulIntegerToFloat", 0) >= 4 * 6  # every encoder Linear is integer
    assert not info["float_layers"]
    assert art.metrics["parity_top1_agreement"] >= 0.98
    assert [c["name"] for c in info["losses"]] == ["kd", "attention_map", "attention_output"]
    parts = info["training"]["history"][-1]
    assert {"loss_kd", "loss_attention_map", "loss_attention_output"} <= set(parts)
    assert art.size_bytes < 1.1 * ptq.size_bytes  # weights stored in int8, like onnxruntime's own int8


def _tiny_bert(seed: int) -> TaskModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)  # fmt: skip
    return TaskModel(BertForSequenceClassification(cfg).eval(), "hf", "text", 2)


def test_qat_lowers_the_distillation_loss_and_only_the_student_learns() -> None:
    teacher, student = _tiny_bert(0), _tiny_bert(0)
    gen = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 100, (8, 12), generator=gen), "attention_mask": torch.ones(8, 12).long()}
    batch["attention_mask"][:3, 9:] = 0
    losses = [
        KDConfig(name="kd", temperature=1.0),
        AttentionMapConfig(name="attention_map"),
        AttentionOutputConfig(name="attention_output"),
    ]
    build_terms(losses, student, teacher, batch)  # eager attention before NNCF traces the model
    student.module = qat.prepare(student.module, [student.inputs(batch)], qat.QatScheme(transformer=True),
                                 ignored_types=["embedding"])  # fmt: skip
    with torch.no_grad():  # disturb the student so that there is something to distil back
        for p in student.module.parameters():
            if p.is_floating_point() and p.dim() == 2:
                p.add_(0.05 * torch.randn_like(p))
    terms = build_terms(losses, student, teacher, batch)
    teacher.module.requires_grad_(False)
    step = distillation_step(student, teacher, terms, ["kd", "map", "out"])
    opt = torch.optim.Adam([p for p in student.module.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(15):
        loss, parts = step(batch)
        first = first or parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = step(batch)[1]
    assert last["map"] < first["map"] and last["out"] < first["out"] and last["kd"] < first["kd"]
    assert all(p.grad is None for p in teacher.module.parameters())
    scales = [p for n, p in student.module.named_parameters() if "scale" in n or "input_range" in n]
    assert scales and all(p.grad is not None for p in scales)  # the quantizers' ranges train too


def test_unsupported_bit_width_is_a_recipe_error(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    text = RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, steps=2, extra="    weights: {bits: 3}\n")
    with pytest.raises(CompressError, match=r"stages\[2\].weights.bits: .*must be one of \[4, 8\]"):
        pipeline.validate(write_recipe(tmp_path, text))


def test_4bit_weight_qat_exports_matmulnbits(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    """4-bit weights: NNCF's trainable int4 scales, written as onnxruntime MatMulNBits with the trained integers."""
    extra = "    weights: {bits: 4}\n  - stage: quantize\n    method: ptq\n    source: teacher\n"
    extra += "    weights: {bits: 4}\n"
    recipe = write_recipe(tmp_path, RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir, steps=6, extra=extra))
    result = pipeline.run(recipe, out=tmp_path / "out")
    art = result.artifacts["teacher.int4-qat.onnx"]
    linears = 4 * 6 + 2  # encoder Linears, pooler, classifier
    assert art.info["integer_kernels"] == {"MatMulNBits": linears}
    assert not art.info["float_layers"]
    assert art.info["scheme"]["activations"] is None
    assert art.metrics["parity_top1_agreement"] >= 0.98 and art.metrics["parity_max_abs_diff"] < 0.1
    graph = onnx.load(str(art.path)).graph
    float_matrices = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    assert len(float_matrices) == 3  # only the word, position and token-type embedding tables stay float
    rtn = result.artifacts["teacher.int4-rtn.onnx"]  # onnxruntime's post-training 4-bit, the baseline
    assert rtn.info["integer_ops"].get("MatMulNBits", 0) >= 4 * 6


def test_fake_quant_round_trip_error_is_bounded() -> None:
    """NNCF's calibrated 8-bit quantizers change a small MLP's outputs, by a bounded amount."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    batches = [{"input": torch.randn(8, 16)} for _ in range(4)]

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - dict key of the batches
            return self.net(input)

    q = qat.prepare(Wrapped(), batches, qat.QatScheme(), ignored_types=[])
    assert qat.quantizer_count(q) >= 4  # two weights, two activations
    x = batches[0]["input"]
    with torch.no_grad():
        ref, got = Wrapped()(input=x), q(input=x)
    step = x.abs().max() / 127  # coarse bound: activation step at the input range
    assert (ref - got).abs().max() < 16 * step
    assert (ref - got).abs().max() > 0  # quantization really happens


def test_nncf_kernels_setting_is_checked_and_torch_loads_the_reference_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nncf.torch.quantization import extensions, reference

    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    monkeypatch.setenv(qat.KERNELS_ENV, "fast")
    with pytest.raises(CompressError, match=r"COMPRESS_NNCF_KERNELS='fast': expected 'compiled' .* or 'torch'"):
        qat.prepare(model, [{"input": torch.randn(2, 4)}], qat.QatScheme(), ignored_types=[])
    monkeypatch.setenv(qat.KERNELS_ENV, "torch")
    monkeypatch.setattr(extensions.QuantizedFunctionsCPU, "_loaded_namespace", None)
    qat._nncf()
    kernel = extensions.QuantizedFunctionsCPU.get("Quantize_forward")
    assert kernel is reference.ReferenceQuantizedFunctions.Quantize_forward


DIGITS = (
    digits_recipe_head("digits-qat")
    + """  - stage: quantize
    source: teacher
    epochs: 1
    batch_size: 64
    lr: 1.0e-4
    calibration_samples: 64
    losses:
      - {name: kd, temperature: 2.0}
      - {name: hidden, weight: 0.1}
  - stage: export
    models: [teacher]
    int8: []
"""
)


def test_cnn_qat_folds_batchnorm_and_runs_integer_convs(tmp_path: Path) -> None:
    result = pipeline.run(write_recipe(tmp_path, DIGITS), out=tmp_path / "out")
    teacher = load_model(result.artifacts["teacher"].path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in teacher.module.modules())
    art = result.artifacts["teacher.int8-qat.onnx"]
    assert art.info["integer_kernels"]["QLinearConv"] == convs  # BatchNorm folded: every Conv is integer
    assert art.metrics["accuracy"] >= result.artifacts["teacher"].metrics["accuracy"] - 0.02
    assert art.size_bytes < 0.5 * result.artifacts["teacher.onnx"].size_bytes  # weights stored in int8
