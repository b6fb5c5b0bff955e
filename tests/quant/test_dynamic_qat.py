"""QAT for onnxruntime's dynamic int8: the emulated rounding is onnxruntime's own, and the deployed graph is the
dynamic-int8 graph."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from transformers import BertConfig, BertForSequenceClassification

from compress.environment import cpu_info
from compress.exporters.onnx import export_onnx
from compress.models.task_model import TaskModel
from compress.quant import dynamic_qat
from compress.quant import ort as ortq


def test_weights_round_as_onnxruntime_int8_weights(tmp_path: Path) -> None:
    """By hand, and against the scale onnxruntime's quantizer writes for a weight."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = torch.tensor([[0.3, -0.7], [0.05, 0.2], [0.6, -0.1]])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], weight.flatten().tolist())],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    quantize_dynamic(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    (scale,) = [v for k, v in inits.items() if k.startswith("w") and k.endswith("scale")]
    assert float(scale) == pytest.approx(0.7 / 127)

    w = torch.tensor([0.5, -0.9, 0.26, 0.001, -1.0], requires_grad=True)
    scale = 1.0 / 127  # symmetric int8, absmax -> 127 (onnxruntime's QInt8 weight scale)
    got = dynamic_qat.fake_quant_weight(w, w.detach().abs().max())
    want = torch.tensor([64, -114, 33, 0, -127]) * scale  # 63.5 -> 64 (half to even), 114.3, 33.02, 0.127
    torch.testing.assert_close(got, want)
    got.sum().backward()  # straight through
    torch.testing.assert_close(w.grad, torch.ones(5))


def test_inputs_round_as_onnxruntime_dynamic_quantize_linear() -> None:
    """The emulation against onnxruntime itself: DynamicQuantizeLinear then DequantizeLinear on the same tensors."""
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 5])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    for x in (torch.randn(1, 7, 5, generator=gen) * 3, torch.rand(1, 7, 5, generator=gen) + 0.5):  # mixed, all > 0
        want = session.run(None, {"x": x.numpy()})[0]
        got = dynamic_qat.fake_quant_input(x).numpy()
        np.testing.assert_allclose(got, want, atol=1e-6)


# onnxruntime's u8 x s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) add pairs of products in
# saturating int16 (vpmaddubsw), so their int8 results differ from exact integer arithmetic, which the emulation
# computes and which VNNI (and ARM) kernels give; onnxruntime's quantization docs advise 7-bit weights
# (reduce_range) on such CPUs for this reason (on an AVX2-only EPYC, MatMulInteger of 64 products 255 x 127 gave
# 32 x 32767, not 2,072,640). There the emulation is checked to a tolerance, elsewhere exactly.
SATURATES = any(f == "avx2" for f in cpu_info()["flags"]) and not any("vnni" in f or f.startswith("amx")
                                                                      for f in cpu_info()["flags"])  # fmt: skip


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=32, initializer_range=0.3,
                     attn_implementation="eager")  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def test_the_emulating_model_matches_the_deployed_int8_graph(tmp_path: Path) -> None:
    """A model prepared for dynamic QAT computes what onnxruntime's fused dynamic-int8 graph of its weights computes
    (far closer than the float model does), and stripping gives back the float model exactly."""
    from compress.families import family_of

    model = TaskModel(_bert(), "hf", "text", 2)
    family_of(model)
    ids = torch.randint(5, 100, (1, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        fp32 = model.module(**batch).logits
    scheme = family_of(model).ptq_scheme(model)
    assert len(scheme.shared_scale) == 2 and scheme.shared_scale[0][0].endswith("attention.self.query")
    export_onnx(model, batch, tmp_path / "m.onnx")
    heads, width, size = scheme.fusion  # type: ignore[misc]
    ortq.fused_dynamic_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", num_heads=heads, hidden_size=width,
                            head_size=size)  # fmt: skip
    assert ortq.integer_ops(tmp_path / "q.onnx").get("QAttention") == 2
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    deployed = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in batch.items() if k in names})[0])
    assert dynamic_qat.prepare(model.module, scheme.shared_scale) == 2 * 6 + 2  # Q K V O, FFN in/out; pooler, head
    with torch.no_grad():
        emulated = model.module(**batch).logits
    # without VNNI the int16 saturation of onnxruntime's kernel is not emulated (0.099 against the float model's
    # 0.119 on this model, whose large initial weights saturate often); still closer than the float model
    assert (emulated - deployed).abs().max() < (1.0 if SATURATES else 0.25) * (fp32 - deployed).abs().max()
    dynamic_qat.strip(model.module)
    assert not any(isinstance(m, dynamic_qat.DynamicInt8Linear) for m in model.module.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.module(**batch).logits, fp32)
    assert onnx.load(str(tmp_path / "q.onnx"))  # a valid graph


@pytest.mark.parametrize("shared", [False, True])
def test_fused_projections_share_one_weight_scale(shared: bool) -> None:
    layer = torch.nn.ModuleDict({"q": torch.nn.Linear(4, 4), "k": torch.nn.Linear(4, 4)})
    with torch.no_grad():
        layer["q"].weight.fill_(0.1)
        layer["k"].weight.fill_(1.0)
    dynamic_qat.prepare(layer, [("q", "k")] if shared else [])
    x = torch.ones(1, 4)
    q = layer["q"]
    assert isinstance(q, dynamic_qat.DynamicInt8Linear)
    absmax = 1.0 if shared else 0.1  # with K's scale, Q's 0.1 rounds on a coarser grid
    weight = dynamic_qat.fake_quant_weight(q.weight, torch.tensor(absmax))
    want = torch.nn.functional.linear(dynamic_qat.fake_quant_input(x), weight, q.bias)
    torch.testing.assert_close(q(x), want)


def test_dynamic_qat_deploys_the_same_graph_as_dynamic_ptq(tmp_path: Path, tiny_bert_dir: Path,
                                                           sst2_slice: Path) -> None:  # fmt: skip
    """`activations: {ranges: dynamic}`: the artifact runs exactly the operators of the dynamic-int8 PTQ graph (so it
    is as fast by construction); only its weights were trained."""
    from compress import pipeline
    from tests.conftest import text_recipe_head, write_recipe

    text = text_recipe_head("qat-dynamic").format(data=sst2_slice, teacher=tiny_bert_dir) + """stages:
  - stage: quantize
    method: qat
    source: teacher
    activations: {ranges: dynamic}
    max_steps: 6
    batch_size: 16
    lr: 1.0e-3
  - stage: quantize
    method: ptq
    source: teacher
    int8: [dynamic]
"""
    result = pipeline.run(write_recipe(tmp_path, text), out=tmp_path / "out")
    qat = result.artifacts["teacher.int8-qat-dynamic.onnx"]
    ptq = result.artifacts["teacher.int8-dynamic.onnx"]
    ops = [collections.Counter(n.op_type for n in onnx.load(str(a.path)).graph.node) for a in (qat, ptq)]
    assert ops[0] == ops[1] and ops[0]["QAttention"] > 0, ops  # one fused integer attention per layer
    assert qat.info["integer_kernels"] and qat.metrics["parity_top1_agreement"] >= 0.98
    # compared at batch 1, as deployed, the emulation rounds exactly as onnxruntime does (1.9e-8 here); at batch 32
    # onnxruntime takes one activation range over the batch and the logits differ (3.7e-4 here, 0.56 on SST-2)
    # (without VNNI, onnxruntime's saturating int16 sums: 1.5e-4 here)
    assert qat.metrics["parity_max_abs_diff"] < (1e-3 if SATURATES else 1e-5)
    assert qat.info["training"]["steps"] == 6
    weights = [{i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(a.path)).graph.initializer
                if i.name.endswith("_quantized")} for a in (qat, ptq)]  # fmt: skip
    assert weights[0].keys() == weights[1].keys()
    assert any(not np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])  # the trained integers differ
