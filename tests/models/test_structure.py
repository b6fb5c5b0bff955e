"""Per-layer encoder structure: layers with different head and FFN counts save, load and export to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.exporters.onnx import export_onnx
from compress.families import load as load_model
from compress.models.structure import TRANSFORM, current_structure, resize_encoder
from compress.models.task_model import TaskModel
from compress.runtimes.onnxruntime import OrtPredictor


def _model() -> TaskModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    module = BertForSequenceClassification(cfg)
    resize_encoder(module, [1, 3], [16, 40])
    model = TaskModel(module.eval(), "hf", "text", 2)
    model.record(TRANSFORM, current_structure(module))  # what the pruning and search code records
    return model


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_structure_round_trip(tmp_path: Path) -> None:
    model = _model()
    assert current_structure(model.module) == {"heads": [1, 3], "ffn": [16, 40]}
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "compress_model.json").read_text())
    assert meta["transforms"] == [{"name": TRANSFORM, "args": {"heads": [1, 3], "ffn": [16, 40]}}]
    again = load_model(tmp_path / "m")
    assert current_structure(again.module) == {"heads": [1, 3], "ffn": [16, 40]}
    with torch.no_grad():
        assert torch.allclose(again.logits(_batch()), model.logits(_batch()), atol=1e-6)


def test_uneven_layers_export_to_onnx_and_match(tmp_path: Path) -> None:
    model = _model()
    path = tmp_path / "m.onnx"
    export_onnx(model, _batch(), path)
    got = OrtPredictor(path, 1, None)({k: v.numpy() for k, v in _batch().items()})
    with torch.no_grad():
        want = model.logits(_batch()).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
