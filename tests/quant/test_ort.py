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
