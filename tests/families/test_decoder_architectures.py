"""The decoder architecture matrix: every Hugging Face model type that the layout methods are registered for gets a
tiny random checkpoint built from its config class (no download), and each registered method runs on it with its
exactness check: a sliced student keeps the teacher's layers, DPHuBERT's physical pruning equals the masked model
(and reloads, exports with its KV cache and decodes like PyTorch), LaDiMo's experts together equal the dense FFN,
and AutoDistil's extracted sub-network equals the super-network's sliced forward. The list below must name exactly
the registered types, so that registering a type without adding it here fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import compress.families  # noqa: F401 - registers the families and their methods
from compress.families import methods as m
from compress.models.task_model import TaskModel

VOCAB = 200
TYPES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "granite"]
OTHER = ["gpt2", "opt", "phi3"]  # other module layouts: export, generation and the losses run on all three
# DPHuBERT and moefy read GPT-2's Conv1D (query, key, value fused), OPT's plain MLP and Phi-3's fused projections too
LAYER_LAYOUTS = [*TYPES, "gpt2", "opt", "phi3"]
LAYOUT_METHODS = {m.STUDENT_DECODER: LAYER_LAYOUTS, m.PRUNE_DPHUBERT: LAYER_LAYOUTS, m.PRUNE_LATENCY: LAYER_LAYOUTS,
                  m.MOEFY: LAYER_LAYOUTS, m.SEARCH_AUTODISTIL: TYPES}  # fmt: skip


def tiny_causal_lm(model_type: str) -> Any:
    """A 3-layer causal LM of ``model_type`` (grouped-query attention: 4 query heads on 2 key/value heads)."""
    import transformers

    if model_type == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_inner=96,
                                         n_positions=64)  # fmt: skip
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config).eval()
    if model_type == "opt":
        config = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3, ffn_dim=96,
                                        num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64)
        torch.manual_seed(0)
        return transformers.OPTForCausalLM(config).eval()
    if model_type == "phi3":  # fused qkv_proj and gate_up_proj
        config = transformers.Phi3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         pad_token_id=0)  # fmt: skip
        torch.manual_seed(0)
        return transformers.Phi3ForCausalLM(config).eval()
    classes = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
               "gemma": "GemmaConfig", "gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig",
               "olmo": "OlmoConfig", "granite": "GraniteConfig"}  # fmt: skip
    config = getattr(transformers, classes[model_type])(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    )  # fmt: skip
    assert config.model_type == model_type
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def _inputs() -> dict[str, torch.Tensor]:
    ids = _ids()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_the_matrix_lists_exactly_the_registered_types() -> None:
    for method, types in LAYOUT_METHODS.items():
        assert sorted(m.architectures_of(method.name, "decoder") or ()) == sorted(types), method.name


@pytest.mark.parametrize("model_type", LAYER_LAYOUTS)
def test_a_sliced_student_keeps_the_teachers_layers_and_reloads(model_type: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from compress.models.decoder import DecoderStudentSpec, build_decoder_student, decoder_layers, decoder_structure

    narrow = build_decoder_student(tiny_causal_lm(model_type), DecoderStudentSpec(layers=2, ffn=48))
    assert decoder_structure(narrow)["ffn"] == [48, 48]  # each type's own FFN width key

    teacher = tiny_causal_lm(model_type)
    student = build_decoder_student(teacher, DecoderStudentSpec(layers=2, init_from_layers=[0, 2])).eval()
    assert student.config.model_type == model_type and student.config.num_hidden_layers == 2
    for s, t in zip(decoder_layers(student), [decoder_layers(teacher)[i] for i in (0, 2)], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), t.state_dict().values(), strict=True))
    student.save_pretrained(tmp_path / "s")  # transformers checks per-layer settings (layer_types) on load
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        logits = student(**_inputs()).logits
        assert logits.shape == (2, 12, VOCAB) and torch.allclose(again(**_inputs()).logits, logits, atol=1e-5)


@pytest.mark.parametrize("model_type", LAYER_LAYOUTS)
def test_dphubert_pruning_equals_the_masked_model_reloads_and_decodes(model_type: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from compress.exporters.decoder import export_decoder_onnx
    from compress.families import load as load_model
    from compress.models.decoder import STRUCTURE, cache_shape, decoder_structure
    from compress.pruning.decoder_masks import DecoderMasks, prune_decoder
    from compress.runtimes.decoding import CachedDecoder, CacheLayout

    model = tiny_causal_lm(model_type)
    masks = DecoderMasks(model).attach(model).eval()
    with torch.no_grad():
        for i, (groups, units) in enumerate(masks.pairs()):
            groups.log_alpha.fill_(8.0)
            units.log_alpha.fill_(8.0)
            units.log_alpha[: 24 * i] = -8.0  # layer i loses 24 * i FFN units
        masks.pairs()[0][0].log_alpha[1] = -8.0  # layer 0 loses a key/value group (with its two query heads)
        for gate in masks.pairs()[1]:
            gate.log_alpha.fill_(-8.0)  # layer 1: every group and unit off, the layer goes
        masked = model(input_ids=_ids()).logits
    gates = masks.deterministic()
    masks.detach()
    kv = decoder_structure(model)["kv_heads"][0]  # 2 (grouped-query) or 4 (GPT-2, OPT)
    structure = prune_decoder(model, gates)
    if model_type in ("gpt2", "opt"):  # output biases: a layer is never the identity, layer 1 keeps a group, a unit
        assert structure == {"kv_heads": [kv - 1, 1, kv], "ffn": [96, 1, 48], "removed_layers": []}
    else:
        assert structure == {"kv_heads": [kv - 1, kv], "ffn": [96, 48], "removed_layers": [1]}
    kept = structure["kv_heads"]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=_ids()).logits, masked, atol=1e-5)
    task = TaskModel(model, "hf", "lm", VOCAB)
    task.record(STRUCTURE, decoder_structure(model))
    task.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.allclose(again.logits(_inputs()), masked, atol=1e-5)

    export_decoder_onnx(again, tmp_path / "m.onnx", opset=17)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert cache_shape(model) == CacheLayout(len(kept), kept, 16)
    tokens, logits = CachedDecoder(lambda f: session.run(None, f), cache_shape(model)).greedy([5, 6, 7], 4)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([[5, 6, 7, *tokens]])).logits[0, 2:].numpy()
    assert np.abs(np.stack(logits) - ref).max() < 1e-3


@pytest.mark.parametrize("model_type", LAYER_LAYOUTS)
def test_moefy_experts_together_equal_the_dense_ffn(model_type: str) -> None:
    from tests.moe.expert_check import split_every_ffn_and_compare

    paths = split_every_ffn_and_compare(TaskModel(tiny_causal_lm(model_type), "hf", "lm", VOCAB), _inputs(), atol=1e-4)
    layers = {"gpt2": "transformer.h", "opt": "model.decoder.layers"}.get(model_type, "model.layers")
    assert paths == [f"{layers}.{i}" for i in range(3)]


@pytest.mark.parametrize("model_type", TYPES)
def test_an_extracted_sub_network_equals_the_sliced_forward(model_type: str) -> None:
    from compress.search.supernet import DecoderSuperNet

    model = tiny_causal_lm(model_type)
    net = DecoderSuperNet(model).eval()
    full = {"layers": 3, "hidden": 64, "heads": 4, "ffn": 96}
    with torch.no_grad():
        assert torch.allclose(net.forward_sub(full, _inputs()).logits, model(**_inputs()).logits, atol=1e-4)
        arch = {"layers": 2, "hidden": 48, "heads": 2, "ffn": 64}
        sliced = net.forward_sub(arch, _inputs()).logits
        student = net.extract(arch)
        assert student.config.model_type == model_type
        assert torch.allclose(student(**_inputs()).logits, sliced, atol=1e-5)


@pytest.mark.parametrize("model_type", LAYER_LAYOUTS)
def test_latency_costs_are_measured_on_the_kv_cache_graph(model_type: str, tmp_path: Path) -> None:
    from compress.devices import resolve_device
    from compress.pruning.latency_costs import measure_decoder_costs

    config = tiny_causal_lm(model_type).config  # three shapes of this type built, exported and timed as decoding
    config.num_hidden_layers = 2  # two layers time what three do, and each export is a third shorter
    lat = measure_decoder_costs(config, resolve_device("x86-cpu", Path(".")), 16, tmp_path)
    assert 0 < lat.full_ms < 1000 and lat.fixed_ms <= lat.full_ms  # timing noise may leave fixed at 0
    assert lat.costs.per_head >= 0 and lat.costs.per_unit >= 0


@pytest.mark.parametrize("model_type", OTHER)
def test_other_layouts_export_their_kv_cache_and_decode_like_pytorch(model_type: str, tmp_path: Path) -> None:
    """GPT-2 (Conv1D, `transformer.h`), OPT (`model.decoder.layers`) and Phi-3 (fused projections, whose KV-cache
    layout comes from the config)."""
    import onnxruntime as ort

    from compress.exporters.decoder import export_decoder_onnx
    from compress.models.decoder import cache_shape
    from compress.runtimes.decoding import CachedDecoder, CacheLayout

    model = tiny_causal_lm(model_type)
    task = TaskModel(model, "hf", "lm", VOCAB)
    export_decoder_onnx(task, tmp_path / "m.onnx", opset=17)
    kv = 2 if model_type == "phi3" else 4
    assert cache_shape(model) == CacheLayout(3, [kv] * 3, 16)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    tokens, logits = CachedDecoder(lambda f: session.run(None, f), cache_shape(model)).greedy([5, 6, 7], 4)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([[5, 6, 7, *tokens]])).logits[0, 2:].numpy()
    assert np.abs(np.stack(logits) - ref).max() < 1e-3


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "phi3"])
def test_the_prune_and_moefy_stages_run_on_the_other_layouts(model_type: str, tmp_path: Path,
                                                             pycode_slice: Path) -> None:  # fmt: skip
    """A `decoder:` student, the `prune` and `moefy` stages on a Hugging Face GPT-2 / OPT / Phi-3 teacher (with its
    own BPE tokenizer, trained on the slice): a one-layer student distilled; a parameter target met on the layout's
    costs, the pruned model reloaded from its recorded structure; the MLPs split into experts; both KV-cache graphs
    decoding like PyTorch."""
    import json

    import transformers

    from compress import pipeline
    from compress.data.config import TokenizerTraining
    from compress.data.lm import train_tokenizer
    from compress.families import load as load_model
    from compress.models.decoder import decoder_layers, decoder_structure
    from compress.moe.convert import is_moe
    from tests.conftest import write_recipe

    docs = [json.loads(line)["text"] for line in (pycode_slice / "train.jsonl").read_text().splitlines()]
    tokenizer = train_tokenizer(docs, TokenizerTraining(vocab_size=400))
    if model_type == "gpt2":
        config: Any = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_inner=128,
                                              n_positions=128, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    elif model_type == "opt":
        config = transformers.OPTConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=64,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    else:
        config = transformers.Phi3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    text = f"""
name: prune-{model_type}
seed: 0
task: causal_lm
data: {{format: jsonl, train: {pycode_slice}/train.jsonl, dev: {pycode_slice}/dev.jsonl,
       test: {pycode_slice}/test.jsonl, max_length: 64}}
teacher: {{hf: {tmp_path / "teacher"}}}
stages:
  - {{stage: distill, student: {{decoder: {{layers: 1}}}}, max_steps: 2, batch_size: 8, losses: [{{name: fkl}}]}}
  - stage: prune
    source: teacher
    output: teacher.pruned
    target: {{params: 0.7}}
    max_steps: 30
    batch_size: 8
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {{max_steps: 2, batch_size: 8}}
  - stage: moefy
    source: teacher
    experts: 4
    calibration_tokens: 2000
    router: {{steps: 10, batch_tokens: 512}}
    policy: {{top_k: 2}}
  - stage: export
    models: [teacher.pruned, teacher.moe]
    int8: []
    int4: false
    generation: {{prompts: ["def "], new_tokens: 4, parity_steps: 4}}
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    student = load_model(result.artifacts["student"].path)  # one teacher layer (Block Influence's pick), distilled
    assert len(decoder_layers(student.module)) == 1 and len(student.spec["decoder"]["init_from_layers"]) == 1
    art = result.artifacts["teacher.pruned"]
    structure = art.info["pruning"]["structure"]
    assert art.params < result.artifacts["teacher"].params
    assert sum(structure["ffn"]) < 256 or sum(structure["kv_heads"]) < (4 if model_type == "phi3" else 8)
    assert decoder_structure(load_model(art.path).module) == {k: structure[k] for k in ("kv_heads", "ffn")}
    onnx = result.artifacts["teacher.pruned.onnx"].metrics
    assert onnx["parity_top1_agreement"] == 1.0 and onnx["parity_max_abs_diff"] < 1e-3
    # moefy on the MLP: all experts together are the dense MLP, the MoE reloads and exports like PyTorch
    moe = result.artifacts["teacher.moe"]
    assert [layer["all_experts_max_abs_diff"] < 1e-4 for layer in moe.info["moe"]["layers"]] == [True, True]
    assert is_moe(load_model(moe.path).module)
    moe_onnx = result.artifacts["teacher.moe.onnx"].metrics
    assert moe_onnx["parity_top1_agreement"] == 1.0 and moe_onnx["parity_max_abs_diff"] < 1e-3
