"""MoE conversion units: exact experts, router distillation, policies that respect their settings."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.errors import ModelError
from compress.moe import convert, policy
from compress.moe.experts import MoeFfn, balanced_kmeans, find_ffn_blocks


def _bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def _batch(seed: int = 1, n: int = 8, t: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(5, 100, (n, t), generator=gen), "attention_mask": torch.ones(n, t).long()}
    batch["attention_mask"][:3, 9:] = 0
    return batch


def test_balanced_kmeans_makes_equal_disjoint_groups() -> None:
    groups = balanced_kmeans(torch.randn(64, 16), 4)
    assert [len(g) for g in groups] == [16] * 4
    assert sorted(torch.cat(groups).tolist()) == list(range(64))


def test_all_experts_reproduce_the_dense_ffn_exactly() -> None:
    model = _bert()
    blocks = find_ffn_blocks(model)
    calib = convert.capture(model, blocks, [_batch()], 10_000)
    block, x, y = blocks[0], calib.inputs[0], calib.outputs[0]
    groups = convert.neuron_groups(block, x, 4, "coactivation", 0)
    moe = MoeFfn.from_dense(block, groups)
    torch.nn.init.normal_(moe.router.weight)  # routing must not matter when every expert is used
    with torch.no_grad():
        assert torch.allclose(moe(x), y, atol=1e-5)  # all experts: the dense path
        moe.threshold = 1.01  # every expert selected, through the token-grouped path
        assert torch.allclose(moe(x), y, atol=1e-5)
    ref = model(**_batch()).logits
    for i, b in enumerate(blocks):  # the whole model with MoE layers, all experts: same logits
        convert.install(b, MoeFfn.from_dense(b, convert.neuron_groups(b, calib.inputs[i], 4, "weights", 0)))
    with torch.no_grad():
        assert torch.allclose(model(**_batch()).logits, ref, atol=1e-5)


def test_router_distillation_loss_falls() -> None:
    model = _bert()
    blocks = find_ffn_blocks(model)
    calib = convert.capture(model, blocks, [_batch(s, n=32) for s in range(4)], 10_000)
    moe = MoeFfn.from_dense(blocks[0], convert.neuron_groups(blocks[0], calib.inputs[0], 4, "coactivation", 0))
    first, last = convert.train_router(moe, calib.inputs[0], calib.outputs[0], steps=150, lr=1e-2,
                                       batch_tokens=256, seed=0)  # fmt: skip
    assert last < 0.8 * first
    assert moe.w1.grad is None  # experts stay the dense FFN; only the router learns


def test_policies_respect_their_settings() -> None:
    torch.manual_seed(0)
    moe = MoeFfn(16, 64, 8, torch.nn.functional.gelu)
    torch.nn.init.normal_(moe.router.weight, std=2.0)
    probs = moe.probabilities(torch.randn(500, 16))
    for k in (1, 3, 8):
        assert (moe.select(probs, top_k=k).sum(-1) == k).all()
    for tau in policy.THRESHOLDS:
        mask = moe.select(probs, threshold=tau)
        mass = (probs * mask).sum(-1)
        assert (mass >= tau - 1e-6).all()  # enough router mass...
        smallest = torch.where(mask, probs, torch.ones_like(probs)).min(-1).values
        assert (mass - smallest < tau + 1e-6).all()  # ...and no expert more than needed
    cands = policy.candidates(moe, "threshold", torch.randn(500, 16))
    assert [c.active for c in cands] == sorted(c.active for c in cands) and cands[-1].active == 1.0


def test_model_without_ffn_blocks_is_named() -> None:
    with pytest.raises(ModelError, match="moefy: Sequential has no FFN blocks the stage understands"):
        find_ffn_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_gated_swiglu_ffns_split_into_exact_experts_and_reload() -> None:
    """LaDiMo's own setting: a LLaMA-style decoder's SwiGLU FFNs (act(gate) * up, then down) as experts."""
    from compress.models.decoder import LlamaSpec, build_llama

    torch.manual_seed(0)
    model = build_llama(LlamaSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, positions=32), 100, 1, 0).eval()
    batch = _batch()
    with torch.no_grad():
        dense_logits = model(**batch).logits
    blocks = find_ffn_blocks(model)
    assert [b.path for b in blocks] == ["model.layers.0", "model.layers.1"] and blocks[0].w_gate is not None
    calib = convert.capture(model, blocks, [batch], 10_000)
    for i, block in enumerate(blocks):
        x, y = calib.inputs[i], calib.outputs[i]
        moe = MoeFfn.from_dense(block, convert.neuron_groups(block, x, 4, "coactivation", 0))
        assert moe.gated and torch.allclose(moe.dense(x), y, atol=1e-5)  # all experts: the dense FFN exactly
        moe.top_k = 2  # token-grouped forward equals the masked sum of the chosen experts' outputs
        mask = moe.select(moe.probabilities(x)).to(x.dtype)
        want = (mask.unsqueeze(-1) * moe.expert_outputs(x)).sum(1) + moe.b2
        assert torch.allclose(moe(x), want, atol=1e-5)
        moe.top_k = 4
        convert.install(block, moe)
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, dense_logits, atol=1e-4)
    moes = convert.moe_layers(model)
    assert [p for p, _ in moes] == ["model.layers.0", "model.layers.1"]
    fresh = build_llama(LlamaSpec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=64, positions=32), 100, 1, 0)
    convert.rebuild(fresh, convert.spec(moes))  # the skeleton a saved MoE decoder is loaded into
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(**batch).logits, dense_logits, atol=1e-4)
