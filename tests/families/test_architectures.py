"""Hugging Face architectures: a method that reads a model's layout is registered for the model types that have it,
and `validate` refuses it for any other type before any work, naming the type and the ones it runs on. Each
checkpoint here is a tiny config built from its config class (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import refused_before_any_work
from tests.families.test_decoder_architectures import TYPES as DECODER_TYPES
from tests.families.test_methods import refused_exactly

ENCODER_STAGES = {  # one stage per method that reads the encoder's layout
    "student:bert": "  - {stage: distill, student: {bert: {layers: 1}}, output: s1, max_steps: 1}",
    "losses:attention": "  - {stage: distill, student: {hf: TEACHER}, output: s2, max_steps: 1, "
    "losses: [{name: kd}, {name: minilm}]}",
    "prune:dphubert": "  - {stage: prune, source: teacher, output: p1, target: {params: 0.5}}",
    "moefy": "  - {stage: moefy, source: teacher, experts: 2, output: m1}",
    "search:diswot": "  - {stage: search, method: diswot, output: d1, budget: {max_params: 1.0e+6}}",
    "search:autodistil": "  - {stage: search, method: autodistil, output: a1, budget: {max_params: 1.0e+6}}",
}
DECODER_STAGES = {
    "student:decoder": "  - {stage: distill, student: {decoder: {layers: 1}}, output: s1, max_steps: 1}",
    "prune:dphubert": "  - {stage: prune, source: teacher, output: p1, target: {params: 0.5}}",
    "moefy": "  - {stage: moefy, source: teacher, experts: 2, output: m1}",
    "search:autodistil": "  - {stage: search, method: autodistil, output: a1, budget: {max_params: 1.0e+6}}",
}


def _encoder_config(model_type: str):  # type: ignore[no-untyped-def]
    import transformers

    small = {"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 128, "num_labels": 2}  # fmt: skip
    if model_type == "distilbert":
        return transformers.DistilBertConfig(vocab_size=1000, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                             max_position_embeddings=128, num_labels=2)  # fmt: skip
    if model_type == "electra":
        return transformers.ElectraConfig(embedding_size=32, **small)
    cls = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig, "deberta-v2":
           transformers.DebertaV2Config, "xlm-roberta": transformers.XLMRobertaConfig}[model_type]  # fmt: skip
    return cls(**small)


def _decoder_config(model_type: str):  # type: ignore[no-untyped-def]
    import transformers

    if model_type == "gpt2":
        return transformers.GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=256)
    if model_type == "opt":
        return transformers.OPTConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      ffn_dim=64, max_position_embeddings=256, word_embed_proj_dim=32)  # fmt: skip
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config,
           "gemma2": transformers.Gemma2Config, "phi3": transformers.Phi3Config}[model_type]  # fmt: skip
    return cls(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=256)  # fmt: skip


def _refused(tmp_path: Path, head: str, stages: dict[str, str], family: str, model_type: str) -> str:
    """A stage per method that reads the layout: exactly the unregistered ones are refused, each saying so."""
    names = list(stages)
    text = (head + "\n".join(stages[n] for n in names) + "\n").replace("TEACHER", str(tmp_path / model_type))
    message = refused_exactly(tmp_path, text, names, family, "hf", model_type)
    for line in message.splitlines():
        assert f"not yet for model type {model_type}: it runs on " in line, line
    return message


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta-v2"])
def test_encoder_methods_that_read_the_layout_are_refused_for_other_layouts(
    tmp_path: Path, sst2_slice: Path, model_type: str
) -> None:
    _encoder_config(model_type).save_pretrained(tmp_path / model_type)
    head = f"""
name: x
data: {{format: tsv, train: {sst2_slice}/train.tsv, dev: {sst2_slice}/dev.tsv, test: {sst2_slice}/test.tsv,
       max_length: 32}}
teacher: {{hf: TEACHER}}
stages:
"""
    message = _refused(tmp_path, head, ENCODER_STAGES, "encoder", model_type)
    layout = model_type in ("bert", "roberta", "xlm-roberta", "electra")
    assert (message == "") == layout, message  # BERT's layout: everything; others: none of these


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma2", "phi3", "gpt2", "opt"])
def test_decoder_methods_that_read_the_layout_are_refused_for_other_layouts(
    tmp_path: Path, pycode_slice: Path, model_type: str
) -> None:
    _decoder_config(model_type).save_pretrained(tmp_path / model_type)
    head = f"""
name: x
task: causal_lm
data: {{format: jsonl, train: {pycode_slice}/train.jsonl, dev: {pycode_slice}/dev.jsonl,
       test: {pycode_slice}/test.jsonl, max_length: 64}}
teacher: {{hf: TEACHER}}
stages:
"""
    message = _refused(tmp_path, head, DECODER_STAGES, "decoder", model_type)
    assert (message == "") == (model_type in DECODER_TYPES), message  # refused: Phi-3's fused, GPT-2's, OPT's layers


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_an_encoder_decoder_checkpoint_is_refused_before_any_work(
    tmp_path: Path, sst2_slice: Path, pycode_slice: Path, task: str
) -> None:
    """T5 (and BART, ...) fit neither task yet: one clear error from `validate` and from `run`, not a crash inside
    transformers minutes in."""
    import transformers

    transformers.T5Config(vocab_size=1000, d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8).save_pretrained(
        tmp_path / "t5")  # fmt: skip
    data = (f"{{format: tsv, train: {sst2_slice}/train.tsv, dev: {sst2_slice}/dev.tsv, test: {sst2_slice}/test.tsv}}"
            if task == "classification" else f"{{format: jsonl, train: {pycode_slice}/train.jsonl, "
            f"dev: {pycode_slice}/dev.jsonl, test: {pycode_slice}/test.jsonl, max_length: 64}}")  # fmt: skip
    text = f"""
name: x
task: {task}
data: {data}
teacher: {{hf: {tmp_path / "t5"}}}
stages: [{{stage: finetune, max_steps: 1}}]
"""
    pattern = r"teacher.hf: .*t5 is an encoder-decoder model \(T5, BART, \.\.\.\), which is not supported yet"
    refused_before_any_work(tmp_path, text, pattern)
