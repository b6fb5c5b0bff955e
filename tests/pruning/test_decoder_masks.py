"""DPHuBERT's masks on a LLaMA-style decoder: physical pruning equals the masked model, grouped-query groups stay
whole, and a layer whose groups and units are all gated off is removed whole (and the model reloads and exports
with its new depth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from compress.families import load as load_model
from compress.models.decoder import STRUCTURE, decoder_structure
from compress.models.task_model import TaskModel
from compress.pruning.decoder_masks import DecoderMasks, prune_decoder


@pytest.fixture()
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(3))


def _set(masks: DecoderMasks, layer: int, groups: list[float], units: float) -> None:
    g, u = masks.pairs()[layer]
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor(groups))
        u.log_alpha.fill_(units)


def test_a_fully_gated_layer_is_removed_and_the_rest_equal_the_masked_model(llama: LlamaForCausalLM,
                                                                            tmp_path: Path) -> None:  # fmt: skip
    masks = DecoderMasks(llama).attach(llama).eval()
    for i in range(3):
        _set(masks, i, [8.0, 8.0], 8.0)
    _set(masks, 1, [-8.0, -8.0], -8.0)  # layer 1: every group and unit off
    g0, _ = masks.pairs()[0]
    with torch.no_grad():
        g0.log_alpha[1] = -8.0  # layer 0 loses one key/value group (with its two query heads)
        masked = llama(input_ids=_ids()).logits
    gates = masks.deterministic()
    masks.detach()
    structure = prune_decoder(llama, gates)
    assert structure == {"kv_heads": [1, 2], "ffn": [96, 96], "removed_layers": [1]}
    assert llama.config.num_hidden_layers == 2 and [m.self_attn.layer_idx for m in llama.model.layers] == [0, 1]
    with torch.no_grad():
        assert torch.allclose(llama(input_ids=_ids()).logits, masked, atol=1e-5)
    model = TaskModel(llama, "hf", "lm", 200)
    model.record(STRUCTURE, decoder_structure(llama))
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")  # two layers from the config, the first resized by the transform
    assert torch.allclose(again.logits({"input_ids": _ids(), "attention_mask": torch.ones(2, 12)}), masked, atol=1e-5)

    from compress.exporters.decoder import export_decoder_onnx
    from compress.models.decoder import cache_shape
    from compress.runtimes.decoding import CachedDecoder, CacheLayout

    export_decoder_onnx(model, tmp_path / "m.onnx", opset=17)
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    runner = CachedDecoder(lambda f: session.run(None, f), cache_shape(llama))
    assert cache_shape(llama) == CacheLayout(2, [1, 2], 16)
    tokens, logits = runner.greedy([5, 6, 7], 4)
    with torch.no_grad():
        ref = llama(input_ids=torch.tensor([[5, 6, 7, *tokens]])).logits[0, 2:].numpy()
    assert np.abs(np.stack(logits) - ref).max() < 1e-3


def test_a_layer_keeps_one_group_or_unit_unless_both_go(llama: LlamaForCausalLM) -> None:
    masks = DecoderMasks(llama).attach(llama).eval()
    for i in range(3):
        _set(masks, i, [8.0, 8.0], 8.0)
    _set(masks, 2, [-8.0, -6.0], 8.0)  # attention all off, the FFN on: the layer stays with its best group
    gates = masks.deterministic()
    assert int((gates["groups"][2] > 0).sum()) == 1 and bool(gates["groups"][2][1] > 0)
    for i in range(3):
        _set(masks, i, [-8.0, -8.0], -8.0)
    with torch.no_grad():
        masks.pairs()[0][0].log_alpha[0] = -7.0  # everything off: the most probable layer stays
    gates = masks.deterministic()
    kept = [bool((z > 0).any()) for z in gates["groups"]]
    assert kept == [True, False, False]


def test_hidden_state_pairs_follow_the_layers_left(llama: LlamaForCausalLM) -> None:
    from compress.families import family_of
    from compress.models.decoder import drop_decoder_layers
    from compress.stages.prune import _after_removal

    model = TaskModel(llama, "hf", "lm", 200)
    family_of(model).adopt(model)
    pairs = [(f"model.layers.{i}", f"teacher.{2 * i}") for i in range(3)]
    drop_decoder_layers(llama, [1])
    family_of(model).adopt(model)
    new_pairs, mapping = _after_removal(pairs, [0, 2, 4], [1], model)
    assert new_pairs == [("model.layers.0", "teacher.0"), ("model.layers.1", "teacher.4")] and mapping == [0, 4]
