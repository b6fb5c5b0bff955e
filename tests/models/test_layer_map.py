"""Which teacher layers a student keeps: evenly spaced, or by Block Influence (ShortGPT)."""

from __future__ import annotations

import pytest
import torch

from compress.models.decoder import LlamaSpec, build_llama, decoder_layers
from compress.models.layer_map import block_influence, evenly_spaced, most_influential


def _teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_llama(LlamaSpec(layers=4, hidden=32, heads=4, kv_heads=2, ffn=64, positions=64), 100, 1, 0).eval()


def test_a_layer_that_passes_its_input_through_has_no_influence_and_is_dropped_first() -> None:
    teacher = _teacher()
    layers = decoder_layers(teacher)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: output == input
        layers[2].self_attn.o_proj.weight.zero_()
        layers[2].mlp.down_proj.weight.zero_()
    batch = {"input_ids": torch.randint(2, 100, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    scores = block_influence(teacher, layers, [batch])
    assert len(scores) == 4 and scores[2] == pytest.approx(0.0, abs=1e-6)
    assert all(s > 1e-3 for i, s in enumerate(scores) if i != 2)
    assert most_influential(scores, 3) == [0, 1, 3]
    assert most_influential(scores, 4) == [0, 1, 2, 3]


def test_padding_does_not_count() -> None:
    teacher = _teacher()
    layers = decoder_layers(teacher)
    ids = torch.randint(2, 100, (1, 5))
    plain = block_influence(teacher, layers, [{"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.long)}])
    padded_ids = torch.cat([ids, torch.ones(1, 3, dtype=torch.long)], dim=1)  # right-padded with the pad id
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    padded = block_influence(teacher, layers, [{"input_ids": padded_ids, "attention_mask": mask}])
    assert padded == pytest.approx(plain, abs=1e-5)


def test_evenly_spaced_layers_end_at_the_last() -> None:
    assert evenly_spaced(3, 6) == [1, 3, 5] and evenly_spaced(10, 30)[-1] == 29 and evenly_spaced(4, 4) == [0, 1, 2, 3]
