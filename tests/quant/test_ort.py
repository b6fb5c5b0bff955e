"""onnxruntime post-training int8: attention fusion of encoders whose layers have different head counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from compress.exporters.onnx import export_onnx
from compress.quant import ort as ortq
from compress.runtimes.onnxruntime import OrtPredictor
from tests.models.test_structure import _batch, _model


def test_pruned_encoder_fuses_each_layer_with_its_own_heads(tmp_path: Path) -> None:
    model = _model()  # heads [1, 3], head size 8
    plain, fused, int8 = tmp_path / "m.onnx", tmp_path / "fused.onnx", tmp_path / "int8.onnx"
    export_onnx(model, _batch(), plain)
    ops = ortq.fuse_transformer(plain, fused, num_heads=1, hidden_size=8, head_size=8)
    assert ops["Attention"] == 2
    heads = [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in onnx.load(str(fused)).graph.node
        if n.op_type == "Attention"
    ]
    assert heads == [1, 3]
    feeds = {k: v.numpy() for k, v in _batch().items()}
    with torch.no_grad():
        want = model.logits(_batch()).numpy()
    np.testing.assert_allclose(OrtPredictor(fused, 1, None)(feeds), want, atol=1e-5)
    ortq.quantize_dynamic(fused, int8, ortq.DYNAMIC_OPS)
    assert ortq.integer_ops(int8)["QAttention"] == 2
    assert np.abs(OrtPredictor(int8, 1, None)(feeds) - want).max() < 0.1


def test_minmax_calibration_takes_the_range_over_every_batch(tmp_path: Path) -> None:
    """`calibration_method: minmax` is the range over all calibration inputs: an input's quantization scale is
    (max - min) / 255 of the union of the batches, not a moving average of each batch's range."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])  # fmt: skip
    src, dst = tmp_path / "m.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    batches = [{"x": np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)},
               {"x": np.array([[-1.0, 0.0, 0.0, 9.0]], np.float32)}]  # a moving average: [-0.5, 6]
    ortq.quantize_static(src, dst, iter(batches), op_types=["MatMul"], method="minmax")
    model = onnx.load(str(dst))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    assert float(inits[q.input[1]]) == np.float32(10.0 / 255)  # [-1, 9] over both batches
