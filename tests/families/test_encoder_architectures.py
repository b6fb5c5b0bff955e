"""The encoder architecture matrix: every Hugging Face encoder type that students and layer taps are registered for
gets a tiny random classifier built from its config class (no download). A `bert:` student is made of the
teacher's own layers (weights equal), the family taps each layer's hidden states, and the types outside BERT's
layout go through finetune, distillation with the `hidden` loss and ONNX export on real SST-2 text. The list below
must name exactly the registered types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import compress.families  # noqa: F401 - registers the families and their methods
from compress import pipeline
from compress.errors import CompressError
from compress.families import methods as m
from tests.conftest import minilm_path, text_recipe_head, write_recipe

TYPES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert"]
UNLISTED = ["mpnet"]  # no layout method registered: the generic ones (finetune, kd, export) still run
OTHER_LAYOUTS = ["distilbert", "deberta-v2", "modernbert"]  # outside BERT's layout: no attention taps, search, ...
# moefy and DPHuBERT (ModernBERT's fused projections included)
FFN_TYPES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2", "modernbert"]


def tiny_config(model_type: str, vocab: int = 1000) -> Any:
    """A 3-layer encoder classifier config of ``model_type`` (hidden 32, 4 heads)."""
    import transformers

    if model_type == "distilbert":
        return transformers.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=3, n_heads=4, hidden_dim=64,
                                             max_position_embeddings=128, num_labels=2)  # fmt: skip
    small = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 128, "num_labels": 2}  # fmt: skip
    if model_type == "electra":
        return transformers.ElectraConfig(embedding_size=32, **small)
    if model_type == "albert":
        return transformers.AlbertConfig(embedding_size=16, **small)
    if model_type == "mpnet":
        return transformers.MPNetConfig(**small)
    if model_type == "modernbert":  # its default special-token ids sit beyond a small vocabulary
        return transformers.ModernBertConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                             sep_token_id=2, **small)  # fmt: skip
    classes = {"bert": "BertConfig", "roberta": "RobertaConfig", "xlm-roberta": "XLMRobertaConfig",
               "deberta-v2": "DebertaV2Config"}  # fmt: skip
    return getattr(transformers, classes[model_type])(**small)


def tiny_encoder(model_type: str) -> Any:
    from transformers import AutoModelForSequenceClassification

    config = tiny_config(model_type)
    assert config.model_type == model_type
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def _tiny_folder(tmp_path: Path, model_type: str) -> Path:
    """A tiny ``model_type`` classifier saved as a Hugging Face folder with MiniLM's real tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path / model_type
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(tiny_config(model_type, tokenizer.vocab_size)).save_pretrained(
        folder)  # fmt: skip
    tokenizer.save_pretrained(folder)
    return folder


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_the_matrix_lists_exactly_the_registered_types() -> None:
    def types(method: Any) -> list[str]:
        return sorted(m.architectures_of(method.name, "encoder") or ())

    assert types(m.HIDDEN_STATES) == sorted(TYPES) and types(m.STUDENT_BERT) == sorted([*TYPES, "albert"])
    assert types(m.PRUNE_DPHUBERT) == sorted(FFN_TYPES)  # DPHuBERT's groups and FFN splits: the same layouts
    assert types(m.MOEFY) == sorted([*FFN_TYPES, "albert"])  # and ALBERT's shared FFN


def test_an_albert_student_runs_the_shared_layer_fewer_times() -> None:
    from compress.errors import ModelError
    from compress.models.bert import BertStudentSpec, build_bert_student

    teacher = tiny_encoder("albert")
    same = build_bert_student(teacher, BertStudentSpec(layers=3)).eval()
    with torch.no_grad():  # the teacher's depth: the teacher itself
        torch.testing.assert_close(same(**_inputs()).logits, teacher(**_inputs()).logits)
    short = build_bert_student(teacher, BertStudentSpec(layers=1))
    assert short.config.num_hidden_layers == 1
    assert sum(p.numel() for p in short.parameters()) == sum(p.numel() for p in teacher.parameters())  # shared
    with pytest.raises(ModelError, match="runs the teacher's shared layer fewer times; give `layers` only"):
        build_bert_student(teacher, BertStudentSpec(layers=1, hidden=16))


def test_albert_distils_a_shorter_student_and_moefies_its_shared_ffn(tmp_path: Path, sst2_slice: Path) -> None:
    folder = _tiny_folder(tmp_path, "albert")
    text = text_recipe_head("albert").format(data=sst2_slice, teacher=folder) + """stages:
  - {stage: finetune, max_steps: 4, batch_size: 16, lr: 1.0e-3}
  - {stage: distill, student: {bert: {layers: 1}}, max_steps: 4, batch_size: 16, losses: [{name: kd}]}
""" + MOEFY.split("  - stage: prune")[0] + """  - {stage: export, models: [student, teacher.moe], int8: []}
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    student, moe = result.artifacts["student"], result.artifacts["teacher.moe"]
    assert result.artifacts["student.onnx"].metrics["accuracy"] == pytest.approx(student.metrics["accuracy"])
    assert [layer["all_experts_max_abs_diff"] < 1e-4 for layer in moe.info["moe"]["layers"]] == [True]  # one, shared
    assert result.artifacts["teacher.moe.onnx"].metrics["accuracy"] == pytest.approx(moe.metrics["accuracy"])


def _deberta_v3() -> Any:
    """DeBERTa-v3's attention: relative positions with their own key / query projections (rows: heads)."""
    import transformers

    config = transformers.DebertaV2Config(**{**tiny_config("deberta-v2").to_dict(), "relative_attention": True,
                                             "pos_att_type": ["p2c", "c2p"], "share_att_key": False,
                                             "position_buckets": 16, "norm_rel_ebd": "layer_norm"})  # fmt: skip
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("model_type", [*FFN_TYPES, "deberta-v3"])
def test_dphubert_pruning_equals_the_masked_model_reloads_and_exports(model_type: str, tmp_path: Path) -> None:
    """Heads, FFN units, a whole attention block and a whole FFN block removed for real: the pruned model computes
    what the masked one did, reloads from its recorded structure and exports to ONNX."""
    from compress.exporters.onnx import export_onnx
    from compress.families import load as load_model
    from compress.models.structure import TRANSFORM, current_structure, encoder_layers
    from compress.models.task_model import TaskModel
    from compress.pruning.encoder_masks import EncoderMasks
    from compress.pruning.physical import prune_encoder
    from compress.runtimes.onnxruntime import OrtPredictor

    model = _deberta_v3() if model_type == "deberta-v3" else tiny_encoder(model_type)
    if model_type == "deberta-v3":
        assert isinstance(model.deberta.encoder.layer[0].attention.self.pos_key_proj, torch.nn.Linear)
    full = sum(p.numel() for p in model.parameters())
    masks = EncoderMasks(model).attach(model)
    with torch.no_grad():
        for gate in [*masks.heads, *masks.units]:
            gate.log_alpha.fill_(8.0)
        masks.heads[0].log_alpha[1] = -8.0  # layer 0 loses a head
        masks.units[0].log_alpha[:20] = -8.0  # and 20 FFN units
        masks.attention_blocks.log_alpha[1] = -8.0  # layer 1 loses its attention block
        masks.ffn_blocks.log_alpha[2] = -8.0  # layer 2 loses its FFN block
    masks.eval()
    with torch.no_grad():
        want = model(**_inputs()).logits
    gates = masks.deterministic()
    masks.detach()
    structure = prune_encoder(model, gates)
    assert structure == {"heads": [3, 0, 4], "ffn": [44, 64, 0], "removed_layers": []}
    assert current_structure(model) == {"heads": [3, 0, 4], "ffn": [44, 64, 0]}
    assert sum(p.numel() for p in model.parameters()) < full
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs()).logits, want, atol=1e-5, rtol=1e-5)
    task = TaskModel(model, "hf", "text", 2)
    task.record(TRANSFORM, current_structure(model))
    task.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert len(encoder_layers(again.module)) == 3
    torch.testing.assert_close(again.logits(_inputs()), want, atol=1e-5, rtol=1e-5)
    export_onnx(again, _inputs(), tmp_path / "m.onnx")
    ort = OrtPredictor(tmp_path / "m.onnx", 1, None)({k: v.numpy() for k, v in _inputs().items()})
    torch.testing.assert_close(torch.from_numpy(ort), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["distilbert", "deberta-v2", "modernbert"])
def test_a_closed_layer_gate_removes_the_layer_of_another_layout(model_type: str) -> None:
    from compress.models.structure import encoder_layers
    from compress.pruning.encoder_masks import EncoderMasks
    from compress.pruning.physical import prune_encoder

    model = tiny_encoder(model_type)
    masks = EncoderMasks(model).attach(model)
    with torch.no_grad():
        masks.whole_layers.log_alpha[1] = -20.0
    masks.eval()
    with torch.no_grad():
        want = model(**_inputs()).logits
    gates = masks.deterministic()
    masks.detach()
    assert prune_encoder(model, gates)["removed_layers"] == [1] and len(encoder_layers(model)) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(**_inputs()).logits, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", FFN_TYPES)
def test_moefy_experts_together_equal_the_dense_ffn(model_type: str) -> None:
    from compress.models.structure import encoder_layer_path
    from compress.models.task_model import TaskModel
    from tests.moe.expert_check import split_every_ffn_and_compare

    model = tiny_encoder(model_type)
    paths = split_every_ffn_and_compare(TaskModel(model, "hf", "text", 2), _inputs(), atol=1e-5)
    assert paths == [f"{encoder_layer_path(model)}.{i}" for i in range(3)]


@pytest.mark.parametrize("model_type", TYPES)
def test_a_student_of_the_teachers_layers_and_its_hidden_state_taps(model_type: str, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from compress.families import family_of
    from compress.models.bert import BertStudentSpec, build_bert_student
    from compress.models.structure import encoder_layer_path, encoder_layers
    from compress.models.task_model import TaskModel

    teacher = tiny_encoder(model_type)
    student = build_bert_student(teacher, BertStudentSpec(layers=2, init_from_layers=[0, 2])).eval()
    assert student.config.model_type == model_type and len(encoder_layers(student)) == 2
    for s, t in zip(encoder_layers(student), [encoder_layers(teacher)[i] for i in (0, 2)], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(), t.state_dict().values(), strict=True))
    path = encoder_layer_path(teacher)
    outside = {k: v for k, v in teacher.state_dict().items() if not k.startswith(path)}
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in outside.items())  # embeddings, head: copied

    model = TaskModel(student, "hf", "text", 2)
    features = family_of(model).feature_modules(model)
    assert features == [f"{path}.0", f"{path}.1"]
    seen: list[torch.Tensor] = []
    hooks = [student.get_submodule(f).register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)) for f in features]  # fmt: skip
    with torch.no_grad():
        logits = student(**_inputs()).logits
    for h in hooks:
        h.remove()
    assert logits.shape == (2, 2) and [tuple(t.shape) for t in seen] == [(2, 10, 32)] * 2
    student.save_pretrained(tmp_path / "s")  # transformers checks per-layer settings on load
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s").eval()
    with torch.no_grad():
        assert torch.allclose(again(**_inputs()).logits, logits, atol=1e-5)


@pytest.mark.parametrize("model_type", OTHER_LAYOUTS)
def test_a_narrower_student_of_another_layout_is_a_clear_error(model_type: str) -> None:
    from compress.models.bert import BertStudentSpec, build_bert_student

    with pytest.raises(CompressError, match=rf"student.bert: hidden resize BERT's layout .*a {model_type} student "
                                            r"keeps the teacher's sizes"):  # fmt: skip
        build_bert_student(tiny_encoder(model_type), BertStudentSpec(layers=1, hidden=16))


STAGES = """stages:
  - stage: finetune
    max_steps: 4
    batch_size: 16
    lr: 1.0e-3
  - stage: distill
    student: {bert: {layers: 1}}
    max_steps: 4
    batch_size: 16
    lr: 1.0e-3
    losses: [{name: kd}, {name: hidden, weight: 1.0}]
  - stage: export
    int8: [dynamic]
"""


MOEFY = """  - stage: moefy
    source: teacher
    experts: 4
    calibration_tokens: 2000
    router: {steps: 10, batch_tokens: 512}
    policy: {top_k: 2}
  - stage: prune
    source: teacher
    output: teacher.pruned
    target: {params: 0.6}
    max_steps: 30
    batch_size: 16
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {max_steps: 2, batch_size: 16}
"""


GENERIC = """stages:
  - {stage: finetune, max_steps: 4, batch_size: 16, lr: 1.0e-3}
  - {stage: distill, student: {hf: TEACHER}, max_steps: 4, batch_size: 16, losses: [{name: kd}, {name: ce}]}
  - {stage: export, int8: [dynamic]}
"""


@pytest.mark.parametrize("model_type", UNLISTED)
def test_an_unlisted_encoder_runs_the_generic_methods(model_type: str, tmp_path: Path, sst2_slice: Path) -> None:
    folder = _tiny_folder(tmp_path, model_type)
    head = text_recipe_head(model_type).format(data=sst2_slice, teacher=folder)
    text = head + GENERIC.replace("TEACHER", str(folder))
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    student = result.artifacts["student"]
    assert result.artifacts["student.onnx"].metrics["accuracy"] == pytest.approx(student.metrics["accuracy"])
    assert "student.int8-dynamic.onnx" in result.artifacts


@pytest.mark.parametrize("model_type", OTHER_LAYOUTS)
def test_another_layout_finetunes_distils_its_hidden_states_and_exports(
    model_type: str, tmp_path: Path, sst2_slice: Path
) -> None:
    folder = _tiny_folder(tmp_path, model_type)
    text = text_recipe_head(model_type).format(data=sst2_slice, teacher=folder) + STAGES
    if model_type in FFN_TYPES:  # its FFNs into experts and DPHuBERT too, exported as graphs that agree with PyTorch
        text = text.replace("  - stage: export\n", MOEFY + "  - stage: export\n")
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    if model_type in FFN_TYPES:  # DPHuBERT: really smaller, reloaded from its structure, exported
        from compress.families import load as load_model
        from compress.models.structure import current_structure

        pruned = result.artifacts["teacher.pruned"]
        structure = pruned.info["pruning"]["structure"]
        assert pruned.params < result.artifacts["teacher"].params
        assert current_structure(load_model(pruned.path).module) == {k: structure[k] for k in ("heads", "ffn")}
        assert result.artifacts["teacher.pruned.onnx"].metrics["accuracy"] == pytest.approx(pruned.metrics["accuracy"])
        moe = result.artifacts["teacher.moe"]
        assert [layer["all_experts_max_abs_diff"] < 1e-4 for layer in moe.info["moe"]["layers"]] == [True] * 3
        assert result.artifacts["teacher.moe.onnx"].metrics["accuracy"] == pytest.approx(moe.metrics["accuracy"])
    student = result.artifacts["student"]
    # both terms are computed, the hidden one on the tapped layers (that losses fall is tested on BERT: this barely
    # fine-tuned random teacher gives near-zero terms that need not fall in a few steps)
    last = student.info["training"]["history"][-1]
    assert last["loss_kd"] >= 0 and last["loss_hidden"] > 0
    assert student.params < result.artifacts["teacher"].params
    onnx = result.artifacts["student.onnx"].metrics
    assert onnx["accuracy"] == pytest.approx(student.metrics["accuracy"])  # the exported graph agrees
    assert "student.int8-dynamic.onnx" in result.artifacts
