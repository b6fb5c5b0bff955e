"""AutoDistil super-network: rewiring keeps the teacher's function, extracted sub-networks equal the sliced
forward, gradients reach only the sliced weights, super-network training lowers the held-out loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.data.config import DataConfig
from compress.data.dataset import load_data
from compress.families import load as load_model
from compress.models.structure import TRANSFORM as STRUCTURE
from compress.models.structure import current_structure
from compress.models.task_model import TaskModel
from compress.search.autodistil import HeldOut, relation_heads, train_supernet
from compress.search.space import TransformerSpace
from compress.search.supernet import SuperNet


@pytest.fixture(scope="module")
def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_rewiring_preserves_the_teacher(bert: BertForSequenceClassification) -> None:
    net = SuperNet(bert).eval()
    full = {"layers": 4, "hidden": 64, "heads": 4, "ffn": 128}
    ref = bert(**_inputs()).logits
    assert torch.allclose(net.forward_sub(full, _inputs()).logits, ref, atol=1e-5)
    assert not torch.equal(net.model.bert.encoder.layer[0].intermediate.dense.weight,
                           bert.bert.encoder.layer[0].intermediate.dense.weight)  # fmt: skip


@pytest.mark.parametrize(
    "arch",
    [{"layers": 2, "hidden": 32, "heads": 3, "ffn": 64}, {"layers": 1, "hidden": 48, "heads": 1, "ffn": 16}],
)
def test_extracted_subnetwork_equals_sliced_forward(
    bert: BertForSequenceClassification, arch: dict, tmp_path: Path
) -> None:
    net = SuperNet(bert).eval()
    with torch.no_grad():
        sliced = net.forward_sub(arch, _inputs()).logits
    model = net.extract(arch)
    assert torch.equal(model(**_inputs()).logits, sliced)
    assert model.config.num_hidden_layers == arch["layers"] and model.config.hidden_size == arch["hidden"]
    # the standalone model survives a save / load round trip (per-layer structure in its config)
    tm = TaskModel(model, "hf", "text", 2)
    tm.record(STRUCTURE, current_structure(model))  # what the search stage records for an extracted student
    tm.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.allclose(again.logits(_inputs()), sliced, atol=1e-6)  # attention kernel may differ after load


def test_gradients_reach_only_the_slices(bert: BertForSequenceClassification) -> None:
    net = SuperNet(bert).train()
    arch = {"layers": 2, "hidden": 32, "heads": 3, "ffn": 64}
    net.forward_sub(arch, _inputs()).logits.sum().backward()
    layers = net.model.bert.encoder.layer
    q = layers[1].attention.self.query.weight.grad  # 2 of 4 layers -> super-network layers 1 and 3
    assert q[:48, :32].abs().sum() > 0 and q[48:].abs().sum() == 0 and q[:, 32:].abs().sum() == 0
    assert layers[0].attention.self.query.weight.grad is None
    assert all(p.grad is None for p in bert.parameters())


def test_sandwich_training_lowers_heldout_loss(tiny_bert_dir: Path, sst2_slice: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    data = load_data(DataConfig(format="tsv", train=str(sst2_slice / "train.tsv"), dev=str(sst2_slice / "dev.tsv"),
                                test=str(sst2_slice / "test.tsv"), max_length=32), Path("."), tok, 0)  # fmt: skip
    module = BertForSequenceClassification.from_pretrained(tiny_bert_dir, attn_implementation="eager")
    teacher = TaskModel(module.eval().requires_grad_(False), "hf", "text", 2, tok)
    space = TransformerSpace(layers=[1, 2], hidden=[16, 24], heads=[2, 3], ffn=[32])
    heads = relation_heads(space, teacher)
    assert heads == 4  # divides 16, 24 (2 and 3 heads of 8) and the teacher's 32
    net = SuperNet(teacher.module)
    held = HeldOut(teacher, data.dev, 2, 16, heads, net.teacher_qkv_paths())
    before = {str(a): held.loss(net, a) for a in space.all()}
    train_supernet(net, teacher, space, data.train, steps=30, batch_size=16, lr=2e-3, random_subnets=1,
                   heads=heads, seed=0, label="test")  # fmt: skip
    after = {str(a): held.loss(net, a) for a in space.all()}
    assert sum(after.values()) < sum(before.values())


# ---- the decoder super-network (LLaMA-style: grouped-query attention, SwiGLU) -----------------------------------
@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _lm_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (2, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_decoder_rewiring_keeps_the_teacher_and_its_groups(llama: torch.nn.Module) -> None:
    from compress.search.supernet import DecoderSuperNet

    net = DecoderSuperNet(llama).eval()
    full = {"layers": 4, "hidden": 64, "heads": 4, "ffn": 128}
    with torch.no_grad():
        assert torch.allclose(net.forward_sub(full, _lm_inputs()).logits, llama(**_lm_inputs()).logits, atol=1e-5)
    moved = [not torch.equal(a.mlp.up_proj.weight, b.mlp.up_proj.weight)
             for a, b in zip(net.model.model.layers, llama.model.layers, strict=True)]  # fmt: skip
    assert any(moved)  # units really were reordered (and the function kept)


@pytest.mark.parametrize(
    "arch", [{"layers": 2, "hidden": 48, "heads": 2, "ffn": 64}, {"layers": 1, "hidden": 64, "heads": 4, "ffn": 32}]
)
def test_extracted_decoder_equals_the_sliced_forward_and_reloads(
    llama: torch.nn.Module, arch: dict, tmp_path: Path
) -> None:
    from compress.search.supernet import DecoderSuperNet

    net = DecoderSuperNet(llama).eval()
    with torch.no_grad():
        sliced = net.forward_sub(arch, _lm_inputs()).logits
        model = net.extract(arch)
        assert torch.equal(model(**_lm_inputs()).logits, sliced)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (arch["layers"], arch["hidden"],
                                                                                arch["heads"])  # fmt: skip
    assert cfg.num_key_value_heads == arch["heads"] // 2 and cfg.head_dim == 16  # the teacher's head size and ratio
    TaskModel(model, "hf", "lm", 300).save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.allclose(again.logits(_lm_inputs()), sliced, atol=1e-5)


def test_decoder_gradients_reach_only_the_slices(llama: torch.nn.Module) -> None:
    from compress.search.supernet import DecoderSuperNet

    net = DecoderSuperNet(llama).train()
    arch = {"layers": 2, "hidden": 48, "heads": 2, "ffn": 64}
    net.forward_sub(arch, _lm_inputs()).logits.sum().backward()
    layers = net.model.model.layers  # 2 of 4 layers -> super-network layers 1 and 3
    k = layers[1].self_attn.k_proj.weight.grad  # one key/value head of 16 channels, 48 input channels
    assert k[:16, :48].abs().sum() > 0 and k[16:].abs().sum() == 0 and k[:, 48:].abs().sum() == 0
    assert layers[0].self_attn.q_proj.weight.grad is None
    assert all(p.grad is None for p in llama.parameters())
