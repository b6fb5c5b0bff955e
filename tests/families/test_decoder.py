"""The decoder family end to end on a pycode slice: a BPE tokenizer trained by the recipe, a tiny LLaMA teacher
pre-trained from scratch, a student sliced from it and distilled with each sequence loss; students and bad
inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import CompressError, ModelError
from compress.families import FAMILIES, family_of, load
from compress.models.decoder import DecoderStudentSpec, LlamaSpec, build_decoder_student, build_llama, decoder_layers
from tests.conftest import lm_recipe_head, minilm_path, refused_before_any_work, write_recipe

DISTILL = """  - stage: distill
    student: {{decoder: {{layers: 1}}}}
    max_steps: 24
    batch_size: 16
    lr: 5.0e-3
    eval_every: 12
    losses:
      - {{name: {loss}}}
"""


DEPLOY = """  - stage: export
    generation: {prompts: ["def ", "import "], new_tokens: 8}
  - stage: profile
    devices: [x86-cpu, openvino-cpu]
    generation: {prompt: 32, new_tokens: 8}
    runs: 30
    warmup: 1
budgets:
  x86-cpu: {tokens_per_s: 10, ttft_ms: 5000, perplexity_increase: 400, artifacts: ["student*"]}
"""


@pytest.fixture(scope="module")
def lm_run(pycode_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> pipeline.RunResult:
    folder = tmp_path_factory.mktemp("lm")
    text = lm_recipe_head("tiny-lm", pycode_slice) + DISTILL.format(loss="taid") + DEPLOY
    return pipeline.run(write_recipe(folder, text), folder / "out")


def test_a_teacher_trained_from_scratch_and_a_distilled_student(lm_run: pipeline.RunResult) -> None:
    arts = lm_run.artifacts
    teacher, student = arts["teacher"], arts["student"]
    history = teacher.info["training"]["history"]
    assert teacher.info["training"]["last_loss"] < teacher.info["training"]["first_loss"] - 0.5  # it learns
    assert history[-1]["dev_perplexity"] < history[0]["dev_perplexity"]
    assert 1 < teacher.metrics["perplexity"] < 512 and teacher.metrics["tokens"] > 100
    assert 0 < teacher.metrics["next_token_accuracy"] < 1
    assert student.params < teacher.params and student.metrics["perplexity"] < 512
    s_history = student.info["training"]["history"]  # TAID's loss rises with t by design: judge by perplexity
    assert s_history[-1]["dev_perplexity"] < s_history[0]["dev_perplexity"]
    model = load(student.path)
    assert family_of(model).name == "decoder" and model.features == ["model.layers.0"]
    assert model.spec["decoder"]["init_from_layers"] in ([0], [1])  # chosen by Block Influence, recorded
    assert (student.path / "tokenizer.json").is_file()  # the student ships the tokenizer it was trained with
    report = json.loads((lm_run.out_dir / "report.json").read_text())
    assert "test ppl" in (lm_run.out_dir / "report.md").read_text() and report["artifacts"]


SEQUENCE_LOSSES = ["fkl", "rkl", "skl", "srkl", "jsd"]  # TAID: `lm_run`


def test_every_sequence_loss_distils_and_its_loss_falls(pycode_slice: Path, tmp_path: Path) -> None:
    """One distill stage per loss, each training its own student from the same teacher (one run: the teacher and
    its data are made once)."""
    stages = "".join(DISTILL.format(loss=loss) + f"    output: student_{loss}\n" for loss in SEQUENCE_LOSSES)
    result = pipeline.run(write_recipe(tmp_path, lm_recipe_head("tiny-lm", pycode_slice) + stages), tmp_path / "out")
    for loss in SEQUENCE_LOSSES:
        student = result.artifacts[f"student_{loss}"]
        training = student.info["training"]
        assert [c["name"] for c in student.info["losses"]] == [loss]
        assert training["last_loss"] < training["first_loss"], loss
        assert student.metrics["perplexity"] < 512, loss


def test_gradients_reach_the_student_only(lm_run: pipeline.RunResult) -> None:
    from compress.losses import build_terms
    from compress.losses.sequence import TaidConfig
    from compress.training.distillation import distillation_step

    teacher, student = load(lm_run.artifacts["teacher"].path), load(lm_run.artifacts["student"].path)
    teacher.module.requires_grad_(False)
    batch = {"input_ids": torch.randint(0, 500, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    batch["labels"] = torch.roll(batch["input_ids"], -1, 1)
    terms = build_terms([TaidConfig(name="taid")], student, teacher, batch)
    loss, _ = distillation_step(student, teacher, terms, ["loss_taid"])(batch)
    loss.backward()
    assert all(p.grad is None for p in teacher.module.parameters())
    assert all(p.grad is not None for p in student.module.parameters() if p.requires_grad)


def test_students_are_sliced_from_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = build_llama(LlamaSpec(layers=4, hidden=32, heads=4, kv_heads=2, ffn=64, positions=64), 100, 1, 0)
    same = build_decoder_student(teacher, DecoderStudentSpec(layers=2))
    t_layers, s_layers = decoder_layers(teacher), decoder_layers(same)
    assert len(s_layers) == 2  # evenly spaced: teacher layers 1 and 3
    assert torch.equal(s_layers[0].mlp.up_proj.weight, t_layers[1].mlp.up_proj.weight)
    assert torch.equal(s_layers[1].self_attn.k_proj.weight, t_layers[3].self_attn.k_proj.weight)
    assert torch.equal(same.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    narrow = build_decoder_student(teacher, DecoderStudentSpec(layers=2, heads=2, kv_heads=1, ffn=32))
    assert narrow.config.num_key_value_heads == 1 and decoder_layers(narrow)[0].mlp.up_proj.out_features == 32
    assert torch.equal(narrow.model.embed_tokens.weight, teacher.model.embed_tokens.weight)  # same width: copied
    with pytest.raises(ModelError, match=r"heads=4 is not a multiple of kv_heads=3"):
        build_decoder_student(teacher, DecoderStudentSpec(layers=1, kv_heads=3))
    with pytest.raises(ModelError, match=r"init_from_layers=\[7\] must list 1 teacher layers in 0..3"):
        build_decoder_student(teacher, DecoderStudentSpec(layers=1, init_from_layers=[7]))


def test_the_family_contract_for_decoders() -> None:
    family = FAMILIES.get("decoder")
    assert family.modality == "lm" and family.supports("hidden_states", "hf")
    assert family.supports("export", "hf") and family.deploy_graph().name == "kv_cache"
    assert family.supports("moefy", "hf")
    assert family.supports("prune:dphubert", "hf") and not family.supports("prune:torch_pruning")


# ---- bad input: each a clear error before any training ----------------------------------------------------------
def _fails(tmp_path: Path, text: str, match: str) -> None:
    refused_before_any_work(tmp_path, text, match, validate=False)


def test_a_decoder_in_a_classification_recipe_and_the_reverse(
    tmp_path: Path, pycode_slice: Path, sst2_slice: Path
) -> None:
    llama_text = lm_recipe_head("x", pycode_slice).replace("task: causal_lm\n", "")
    _fails(tmp_path, llama_text, r"teacher.llama builds a causal language model; it needs `task: causal_lm`")
    folder = tmp_path / "decoder"
    build_llama(LlamaSpec(layers=1, hidden=32, heads=2, ffn=32), 300, 1, 0).save_pretrained(folder)
    sst = f"""
name: x
data: {{format: tsv, train: {sst2_slice}/train.tsv}}
teacher: {{hf: {folder}}}
stages: [{{stage: finetune, max_steps: 1}}]
"""
    _fails(tmp_path, sst, r"is a causal language model; a classification recipe needs an encoder .* `task: causal_lm`")
    encoder = lm_recipe_head("x", pycode_slice).replace(
        "  llama: {layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 128, positions: 256}",
        f"  hf: {minilm_path()}").replace("  tokenizer: {vocab_size: 512}\n", "")  # fmt: skip
    _fails(tmp_path, encoder, r"is a bidirectional encoder, not a causal language model")


def test_a_tokenizer_larger_than_the_vocabulary_names_both_sizes(tmp_path: Path, pycode_slice: Path) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "decoder"
    build_llama(LlamaSpec(layers=1, hidden=32, heads=2, ffn=32), 300, 1, 0).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)  # 30522 tokens for a 300-token model
    text = lm_recipe_head("x", pycode_slice).replace(
        "  llama: {layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 128, positions: 256}",
        f"  hf: {folder}").replace("  tokenizer: {vocab_size: 512}\n", "")  # fmt: skip
    _fails(tmp_path, text, r"the tokenizer has 30522 tokens but the model's vocabulary has 300")


def test_a_block_longer_than_the_positions_and_unsupported_stages(tmp_path: Path, pycode_slice: Path) -> None:
    long = lm_recipe_head("x", pycode_slice, block=512)
    _fails(tmp_path, long, r"data.max_length: 512 tokens, but the teacher has 256 positions")
    prompt = lm_recipe_head("x", pycode_slice) + "  - stage: profile\n    generation: {prompt: 100}\n"
    _fails(tmp_path, prompt, r"stages\[1\].generation.prompt: 100 tokens is longer than the blocks the models learn "
                             r"from \(data.max_length 64\); give at most 64")
    prune = lm_recipe_head("x", pycode_slice) + "  - stage: prune\n    method: torch_pruning\n"
    prune += "    target: {flops: 0.5}\n"
    _fails(tmp_path, prune, r"stages\[1\].method: torch_pruning does not apply to this teacher .*decoder family")
    bert = lm_recipe_head("x", pycode_slice) + "  - stage: distill\n    student: {bert: {layers: 1}}\n"
    _fails(tmp_path, bert, r"stages\[1\].student.bert: `bert` students are built from a Hugging Face BERT-family")
    no_tok = lm_recipe_head("x", pycode_slice).replace("  tokenizer: {vocab_size: 512}\n", "")
    _fails(tmp_path, no_tok, r"teacher.llama is built from scratch and needs a tokenizer: set data.tokenizer")


def test_the_deployed_graphs_decode_with_a_kv_cache_and_are_measured_as_generation(lm_run: pipeline.RunResult) -> None:
    arts = lm_run.artifacts
    for model in ("teacher", "student"):
        fp32, int8, int4 = (arts[f"{model}{s}"] for s in (".onnx", ".int8-dynamic.onnx", ".int4.onnx"))
        assert fp32.metrics["parity_max_abs_diff"] < 1e-3 and fp32.metrics["parity_top1_agreement"] == 1.0
        assert fp32.metrics["perplexity"] == pytest.approx(arts[model].metrics["perplexity"], rel=1e-3)
        assert int4.info["integer_ops"].get("MatMulNBits", 0) > 0 and int8.info["integer_ops"]
        assert int4.size_bytes < fp32.size_bytes and int8.size_bytes < fp32.size_bytes
        assert abs(int8.metrics["perplexity"] / fp32.metrics["perplexity"] - 1) < 0.05  # int8 barely moves it
        for art in (fp32, int8, int4):
            lat = art.latency["x86-cpu"]
            assert lat["tokens_per_s"] > 0 and lat["ttft_p50_ms"] > 0 and lat["generation"]["new_tokens"] == 8
            assert [c["prompt"] for c in art.info["completions"]] == ["def ", "import "]
        for art in (fp32, int8):  # OpenVINO decodes the same graphs through their cache
            lat = art.latency["openvino-cpu"]
            assert lat["runtime"] == "openvino" and lat["tokens_per_s"] > 0 and lat["ttft_p50_ms"] > 0
            assert lat["kv_cache_mb"] == pytest.approx(art.latency["x86-cpu"]["kv_cache_mb"])
    assert 0 < arts["student.onnx"].metrics["top1_agreement_with_teacher"] <= 1
    report = json.loads((lm_run.out_dir / "report.json").read_text())
    assert {c["limit"] for c in report["budgets"]} == {"tokens_per_s", "ttft_ms", "perplexity_increase"}
    assert all(c["passed"] for c in report["budgets"])
    markdown = (lm_run.out_dir / "report.md").read_text()
    assert "## Greedy completions" in markdown and "x86-cpu tokens/s" in markdown


def test_moefy_turns_a_decoder_s_swiglu_ffns_into_experts(tmp_path: Path, pycode_slice: Path) -> None:
    text = lm_recipe_head("lm-moe", pycode_slice) + """  - stage: moefy
    source: teacher
    experts: 4
    calibration_tokens: 4000
    router: {steps: 30, batch_tokens: 1024}
    policy: {eval_samples: 16, max_accuracy_drop: 5.0}
  - stage: export
    models: [teacher.moe]
    int8: []
    int4: false
    generation: {prompts: ["def "], new_tokens: 4}
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    art = result.artifacts["teacher.moe"]
    moe = art.info["moe"]
    assert [layer["all_experts_max_abs_diff"] < 1e-4 for layer in moe["layers"]] == [True, True]
    assert all(layer["router_last_loss"] <= layer["router_first_loss"] for layer in moe["layers"])
    assert 0 < moe["activated"]["active_fraction"] <= 1
    growth = 100 * (art.metrics["perplexity"] / result.artifacts["teacher"].metrics["perplexity"] - 1)
    assert growth < 10  # the policy search keeps dev perplexity within ~5%; test within twice that
    model = load(art.path)
    from compress.moe.convert import is_moe

    assert is_moe(model.module) and model.family == "decoder"
    onnx = result.artifacts["teacher.moe.onnx"]
    assert onnx.metrics["parity_top1_agreement"] == 1.0
    assert onnx.metrics["perplexity"] == pytest.approx(art.metrics["perplexity"], rel=1e-3)


def test_dphubert_prunes_key_value_groups_and_ffn_units_of_a_decoder(tmp_path: Path, pycode_slice: Path) -> None:
    text = lm_recipe_head("lm-prune", pycode_slice) + """  - stage: prune
    source: teacher
    output: teacher.pruned
    target: {params: 0.6}
    max_steps: 40
    batch_size: 16
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {max_steps: 4, batch_size: 16}
  - stage: export
    models: [teacher.pruned]
    int8: []
    int4: false
    generation: {prompts: ["def "], new_tokens: 4}
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    art = result.artifacts["teacher.pruned"]
    pruning = art.info["pruning"]
    structure = pruning["structure"]
    assert art.params < result.artifacts["teacher"].params
    assert all(1 <= n <= 2 for n in structure["kv_heads"]) and all(1 <= f <= 128 for f in structure["ffn"])
    assert sum(structure["ffn"]) < 256 or sum(structure["kv_heads"]) < 4  # something really went
    model = load(art.path)  # rebuilt from the recorded per-layer structure
    from compress.models.decoder import decoder_structure

    assert decoder_structure(model.module) == {k: structure[k] for k in ("kv_heads", "ffn")}
    onnx = result.artifacts["teacher.pruned.onnx"]  # per-layer cache shapes in the graph
    assert onnx.metrics["parity_top1_agreement"] == 1.0
    assert onnx.metrics["perplexity"] == pytest.approx(art.metrics["perplexity"], rel=1e-3)


def test_qat_trains_4bit_weights_of_a_decoder_and_ptq_quantizes_its_kv_cache_graph(
    tmp_path: Path, pycode_slice: Path
) -> None:
    text = lm_recipe_head("lm-qat", pycode_slice) + """  - stage: quantize
    source: teacher
    max_steps: 12
    batch_size: 8
    lr: 1.0e-4
    calibration_samples: 16
    eval_every: 12
  - stage: quantize
    method: ptq
    source: teacher
    int8: [dynamic]
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    arts = result.artifacts
    fp32 = arts["teacher"].metrics["perplexity"]
    qat = arts["teacher.int4-qat.onnx"]  # 4-bit weight-only: the family's default, no `weights` given
    assert qat.info["scheme"] == {"weights": {"bits": 4, "per_channel": True}, "activations": None}
    assert qat.info["integer_ops"].get("MatMulNBits", 0) >= 14 and "MatMulNBits" in qat.info["integer_kernels"]
    assert qat.metrics["parity_top1_agreement"] >= 0.98 and qat.info["kv_cache"]["layers"] == 2
    assert qat.metrics["perplexity"] < 1.3 * fp32 and len(qat.info["completions"]) == 3
    assert qat.info["losses"][0]["name"] == "fkl" and qat.info["training"]["steps"] == 12
    int8 = arts["teacher.int8-dynamic.onnx"]
    assert int8.stage == "quantize" and int8.parent == "teacher" and "teacher.onnx" not in arts
    assert int8.metrics["perplexity"] == pytest.approx(fp32, rel=0.05)
    assert not (result.out_dir / "teacher.onnx").exists()


def test_qat_and_static_int8_refusals_on_a_decoder(tmp_path: Path, pycode_slice: Path) -> None:
    eight = lm_recipe_head("x", pycode_slice) + "  - stage: quantize\n    source: teacher\n    weights: {bits: 8}\n"
    _fails(tmp_path, eight, r"stages\[1\].weights.bits: 8-bit QAT does not apply to .*decoder family.*4-bit")
    static = lm_recipe_head("x", pycode_slice) + "  - stage: export\n    int8: [dynamic, static]\n"
    _fails(tmp_path, static, r"stages\[1\].int8: static int8 does not apply to .*a causal LM")


def test_an_executorch_program_with_a_static_cache_decodes_like_pytorch(tmp_path: Path, pycode_slice: Path) -> None:
    # one decoder layer: XNNPACK lowering time grows with the graph, and one layer has every operator two have
    head = lm_recipe_head("lm-et", pycode_slice).replace("llama: {layers: 2,", "llama: {layers: 1,")
    text = head + """  - stage: export
    int8: [dynamic]
    int4: false
    executorch: {}
    generation: {prompts: ["def ", "import "], new_tokens: 8}
  - stage: profile
    devices: [x86-cpu, executorch-xnnpack]
    generation: {prompt: 32, new_tokens: 8}
    runs: 30
    warmup: 1
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    arts = result.artifacts
    pte, onnx = arts["teacher.xnnpack.pte"], arts["teacher.onnx"]
    assert "teacher.xnnpack-int8.pte" not in arts  # no int8 program of a model that updates its cache
    assert pte.precision == "fp32" and pte.info["max_cache_len"] == 64 and pte.info["operators"]["xnnpack_delegate"]
    assert pte.metrics["parity_max_abs_diff"] < 1e-3 and pte.metrics["parity_top1_agreement"] == 1.0
    assert pte.metrics["perplexity"] == pytest.approx(onnx.metrics["perplexity"], rel=1e-3)  # measured on ExecuTorch
    assert pte.info["completions"] == onnx.info["completions"]
    lat = pte.latency["executorch-xnnpack"]
    assert lat["runtime"] == "executorch" and lat["tokens_per_s"] > 0 and lat["ttft_p50_ms"] > 0
    ship = tmp_path / "out" / "ship"  # per device: the file to deploy, its tokenizer and its cache layout
    assert {p.name for p in ship.iterdir()} == {"x86-cpu", "executorch-xnnpack"}
    assert (ship / "executorch-xnnpack" / "model.pte").is_file() and (ship / "x86-cpu" / "model.onnx").is_file()
    layout = json.loads((ship / "x86-cpu" / "kv_cache.json").read_text())
    on_ort = next(h for h in result.report["headline"] if h["device"] == "x86-cpu")
    assert layout == arts[on_ort["artifact"]].info["kv_cache"] and on_ort["artifact"].endswith(".onnx")
    assert (ship / "x86-cpu" / "tokenizer.json").is_file()
    assert "perplexity" in (ship / "x86-cpu" / "README.md").read_text()
    int8 = lm_recipe_head("x", pycode_slice) + "  - stage: export\n    executorch: {precisions: [fp32, int8]}\n"
    (tmp_path / "int8").mkdir()
    _fails(tmp_path / "int8", int8, r"stages\[1\].executorch.precisions: int8 ExecuTorch programs of causal LMs")
    overflow = text.replace("generation: {prompt: 32, new_tokens: 8}", "generation: {prompt: 60, new_tokens: 8}")
    (tmp_path / "overflow").mkdir()
    _fails(tmp_path / "overflow", overflow, r"stages\[2\].generation: a prompt of 60 and 8 new tokens overflow")


def test_a_latency_target_is_measured_as_decode_time_per_token(tmp_path: Path, pycode_slice: Path) -> None:
    from compress.devices import resolve_device
    from compress.pruning.latency_costs import measure_decoder_costs
    from compress.search.candidates import build_decoder

    # the costs of a model shaped like the recipe's teacher, measured as generation on onnxruntime
    config = build_decoder(_llama_config(), {"layers": 2, "hidden": 64, "heads": 4, "ffn": 128}).config
    lat = measure_decoder_costs(config, resolve_device("x86-cpu", Path(".")), 32, tmp_path)
    assert 0 < lat.full_ms < 1000 and lat.fixed_ms <= lat.full_ms
    assert lat.costs.per_head >= 0 and lat.costs.per_unit >= 0
    head = lm_recipe_head("lm-lat", pycode_slice) + """  - stage: prune
    source: teacher
    target: {latency_ms: 1000, sequence: 32}
    max_steps: 4
    batch_size: 8
"""
    with pytest.raises(CompressError, match=r"prune.target.latency_ms: the unpruned model already measures [0-9.]+ ms"):
        pipeline.run(write_recipe(tmp_path, head), tmp_path / "out")
    et = head.replace("latency_ms: 1000, sequence: 32", "latency_ms: 0.1, sequence: 32, device: executorch-xnnpack")
    with pytest.raises(CompressError, match=r"prune.target.device: executorch-xnnpack runs executorch; a causal LM"):
        pipeline.run(write_recipe(tmp_path, et), tmp_path / "out")


def _llama_config() -> object:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
