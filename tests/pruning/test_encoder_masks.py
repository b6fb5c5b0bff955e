"""DPHuBERT masks: hard-concrete statistics, expected size against a hand count, exact physical pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.exporters.onnx import export_onnx
from compress.models.structure import current_structure
from compress.models.task_model import TaskModel
from compress.pruning.encoder_masks import EncoderMasks, param_costs
from compress.pruning.hardconcrete import HardConcrete
from compress.pruning.physical import prune_encoder
from compress.runtimes.onnxruntime import OrtPredictor


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=32)  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_hard_concrete_sampling_statistics() -> None:
    torch.manual_seed(0)
    gate = HardConcrete(20000, init_keep=0.7).train()
    z = gate()
    assert z.min() >= 0 and z.max() <= 1
    # the fraction of non-zero samples matches the closed form P(z > 0) = init_keep
    assert (z > 0).float().mean().item() == pytest.approx(0.7, abs=0.01)
    assert gate.prob_nonzero().mean().item() == pytest.approx(0.7, abs=1e-5)
    assert 0.0 < (z == 1).float().mean().item() < 1.0  # exact ones happen too (stretched, clamped)
    gate.eval()
    assert torch.equal(gate(), gate())  # deterministic at evaluation


def test_expected_size_matches_a_hand_count() -> None:
    model = _bert()
    masks = EncoderMasks(model)
    costs = param_costs(model.config)
    assert costs.per_head == 4 * 32 * 8 + 3 * 8 and costs.per_unit == 2 * 32 + 1
    layers = model.bert.encoder.layer
    prunable = 0
    for layer in layers:
        att = layer.attention.self
        prunable += sum(p.numel() for m in (att.query, att.key, att.value) for p in m.parameters())
        prunable += layer.attention.output.dense.weight.numel() + layer.output.dense.weight.numel()
        prunable += sum(p.numel() for p in layer.intermediate.dense.parameters())
    assert masks.full_size(costs) == prunable
    with torch.no_grad():  # make every gate almost surely open: expected size -> full size
        for p in masks.parameters():
            p.fill_(20.0)
    assert masks.expected_size(costs).item() == pytest.approx(prunable, rel=1e-6)
    with torch.no_grad():  # close layer 0's attention block: its heads no longer count
        masks.attention_blocks.log_alpha[0] = -20.0
    assert masks.expected_size(costs).item() == pytest.approx(prunable - 4 * costs.per_head, rel=1e-5)


def test_physically_pruned_model_matches_the_masked_one(tmp_path: Path) -> None:
    model = _bert()
    masks = EncoderMasks(model).attach(model)
    with torch.no_grad():
        for gate in [*masks.heads, *masks.units]:
            gate.log_alpha.normal_(0.0, 3.0)  # a mix of closed, open and partially open gates
        masks.attention_blocks.log_alpha[1] = -20.0  # layer 1 loses its attention block
        masks.ffn_blocks.log_alpha[2] = -20.0  # layer 2 loses its FFN block
    masks.eval()
    masks.sample()
    with torch.no_grad():
        want = model(**_batch()).logits
    gates = masks.deterministic()
    masks.detach()
    structure = prune_encoder(model, gates)
    assert structure == current_structure(model)
    assert structure["heads"][1] == 0 and structure["ffn"][2] == 0
    assert sum(structure["heads"]) < 12 and sum(structure["ffn"]) < 3 * 48
    with torch.no_grad():
        got = model(**_batch()).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # smaller for real, and it exports and runs on onnxruntime
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in _bert().parameters())
    tm = TaskModel(model, "hf", "text", 2)
    export_onnx(tm, _batch(), tmp_path / "p.onnx")
    ort = OrtPredictor(tmp_path / "p.onnx", 1, None)({k: v.numpy() for k, v in _batch().items()})
    torch.testing.assert_close(torch.from_numpy(ort), want, atol=1e-4, rtol=1e-4)
