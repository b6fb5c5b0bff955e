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
    for layer in layers:  # everything of a layer: its heads, its units, its own biases and LayerNorms
        prunable += sum(p.numel() for p in layer.parameters())
    assert costs.per_layer == sum(p.numel() for p in layers[0].parameters()) - 4 * costs.per_head - 48 * costs.per_unit
    assert masks.full_size(costs) == prunable
    with torch.no_grad():  # make every gate almost surely open: expected size -> full size
        for p in masks.parameters():
            p.fill_(20.0)
    assert masks.expected_size(costs).item() == pytest.approx(prunable, rel=1e-6)
    with torch.no_grad():  # close layer 0's attention block: its heads no longer count
        masks.attention_blocks.log_alpha[0] = -20.0
    assert masks.expected_size(costs).item() == pytest.approx(prunable - 4 * costs.per_head, rel=1e-5)
    with torch.no_grad():  # close layer 2 as a whole: nothing of it counts
        masks.whole_layers.log_alpha[2] = -20.0
    layer_2 = costs.per_layer + 4 * costs.per_head + 48 * costs.per_unit
    assert masks.expected_size(costs).item() == pytest.approx(prunable - 4 * costs.per_head - layer_2, rel=1e-5)


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
    assert structure == current_structure(model) | {"removed_layers": []}
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


def test_a_closed_layer_gate_removes_the_whole_layer(tmp_path: Path) -> None:
    """BERT layers are post-LayerNorm: a layer with no heads and no units is not the identity, so whole layers
    have their own gate; a closed one is the identity while masked and is gone from the pruned model and its
    ONNX graph, which still match the masked model."""
    model = _bert()
    masks = EncoderMasks(model).attach(model)
    with torch.no_grad():
        for gate in [*masks.heads, *masks.units]:
            gate.log_alpha.normal_(0.0, 3.0)
        masks.whole_layers.log_alpha[1] = -20.0
    masks.eval()
    with torch.no_grad():
        out = model(**_batch(), output_hidden_states=True)
    # the closed layer passes its input through, and Hugging Face's hidden states see the gated output
    torch.testing.assert_close(out.hidden_states[2], out.hidden_states[1])
    assert [float(z) for z in masks.deterministic()["layers"]] == [1.0, 0.0, 1.0]
    gates = masks.deterministic()
    masks.detach()
    structure = prune_encoder(model, gates)
    assert structure["removed_layers"] == [1]
    assert len(model.bert.encoder.layer) == 2 and model.config.num_hidden_layers == 2
    assert {k: structure[k] for k in ("heads", "ffn")} == current_structure(model)
    with torch.no_grad():
        got = model(**_batch()).logits
    torch.testing.assert_close(got, out.logits, atol=1e-5, rtol=1e-5)
    tm = TaskModel(model, "hf", "text", 2)
    export_onnx(tm, _batch(), tmp_path / "p.onnx")
    ort = OrtPredictor(tmp_path / "p.onnx", 1, None)({k: v.numpy() for k, v in _batch().items()})
    torch.testing.assert_close(torch.from_numpy(ort), out.logits, atol=1e-4, rtol=1e-4)


def test_layer_gates_mix_the_layer_with_its_input_while_training() -> None:
    model = _bert().train()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    masks = EncoderMasks(model).attach(model)
    with pytest.raises(RuntimeError, match="sample"):
        model(**_batch())
    masks.train()
    masks.sample()
    masks._z["layers"] = [torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.25)]
    raw: list[torch.Tensor] = []  # layer 2's own output, before its gate (this hook runs first)
    model.bert.encoder.layer[2].register_forward_hook(lambda m, a, o: raw.append(o), prepend=True)
    h = model(**_batch(), output_hidden_states=True).hidden_states
    torch.testing.assert_close(h[2], h[1])  # z = 0: the input
    torch.testing.assert_close(h[3], 0.25 * raw[0] + 0.75 * h[2])


def test_a_model_with_removed_layers_saves_reloads_and_exports(tmp_path: Path) -> None:
    """The whole path the prune stage takes: masked groups finalized with a closed layer gate, the model recorded,
    saved, reloaded by its family with the new depth and per-layer structure, equal outputs."""
    from compress.families import family_of
    from compress.families import load as load_model
    from compress.pruning.masked import EncoderGroups, PruneGoal

    model = TaskModel(_bert(), "hf", "text", 2)
    family_of(model).adopt(model)
    groups = EncoderGroups(model, PruneGoal(params=0.5))
    with torch.no_grad():
        groups.masks.whole_layers.log_alpha[0] = -20.0
        groups.masks.heads[2].log_alpha[:2] = -20.0  # and two heads of the last layer
    groups.masks.eval()
    with torch.no_grad():
        want = model.module(**_batch()).logits
    kept, structure = groups.finalize()
    assert structure["removed_layers"] == [0] and structure["heads"] == [4, 2] and len(structure["ffn"]) == 2
    full = groups.full
    c = groups.costs
    kept_size = sum(structure["heads"]) * c.per_head + sum(structure["ffn"]) * c.per_unit + 2 * c.per_layer
    assert kept == pytest.approx(kept_size / full)
    family_of(model).adopt(model)  # as the prune stage does after a removal: the taps follow the layers left
    model.save(tmp_path / "pruned")
    loaded = load_model(tmp_path / "pruned")
    assert loaded.module.config.num_hidden_layers == 2 and loaded.features == model.features
    assert len(loaded.features) == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(**_batch()).logits, want, atol=1e-5, rtol=1e-5)


def test_a_candidate_is_the_pruned_model_and_the_masked_one_trains_on() -> None:
    """The closed latency loop measures what `finalize` would make, as a copy: it computes what the masked model
    computes, and the masked model keeps its layers, its config and its masks."""
    from compress.pruning.masked import EncoderGroups, PruneGoal

    model = TaskModel(_bert(), "hf", "text", 2)
    groups = EncoderGroups(model, PruneGoal(params=0.5))
    with torch.no_grad():
        for gate in [*groups.masks.heads, *groups.masks.units]:
            gate.log_alpha.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(1))
        groups.masks.whole_layers.log_alpha[1] = -20.0
    model.module.eval()
    with torch.no_grad():
        want = model.module(**_batch()).logits
    candidate, kept = groups.candidate()
    with torch.no_grad():
        torch.testing.assert_close(candidate(**_batch()).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.module(**_batch()).logits, want)  # the masks still act on the model
    assert len(candidate.bert.encoder.layer) == 2 and candidate.config.num_hidden_layers == 2
    assert len(model.module.bert.encoder.layer) == 3 and model.module.config.num_hidden_layers == 3
    assert 0 < kept < 1
    final, structure = groups.finalize()
    assert final == pytest.approx(kept)
    assert {k: structure[k] for k in ("heads", "ffn")} == current_structure(candidate)
