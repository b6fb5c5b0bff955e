"""Text end to end on real SST-2 slices: a tiny BERT teacher, a 2-layer student, every loss, int8, profile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from compress import pipeline
from compress.data.config import DataConfig
from compress.data.dataset import load_data
from compress.families import FAMILIES
from compress.losses import build_terms
from compress.losses.terms import Captured, HiddenConfig, KDConfig, MiniLMConfig
from compress.models.bert import BertStudentSpec, build_bert_student
from compress.models.source import ModelSource, build_model
from compress.models.task_model import TaskModel
from tests.conftest import TINY_FINETUNE, text_recipe_head, write_recipe

TEXT_RECIPE = (
    text_recipe_head("tiny-sst2")
    + "stages:\n"
    + TINY_FINETUNE
    + """  - stage: distill
    student:
      bert: {{layers: 2}}
    max_steps: 12
    batch_size: 16
    lr: 1.0e-3
    losses:
      - {{name: kd, temperature: 2.0}}
      - {{name: ce, weight: 0.5}}
      - {{name: hidden, weight: 0.5}}
      - {{name: minilm, weight: 1.0, relation_heads: 2}}
  - stage: export
    int8: [dynamic, static]
    calibration_samples: 32
  - stage: profile
    devices: [x86-cpu]
    shape: {{batch: 1, sequence: 32}}
    runs: 10
    warmup: 2
"""
)


def test_text_recipe_end_to_end(tmp_path: Path, tiny_bert_dir: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, TEXT_RECIPE.format(data=sst2_slice, teacher=tiny_bert_dir))
    cwd_before = set(Path.cwd().iterdir())
    result = pipeline.run(recipe, tmp_path / "out")
    assert set(Path.cwd().iterdir()) == cwd_before  # onnxruntime's scratch files stay out of the user's folder
    arts = result.artifacts
    assert arts["student"].params < arts["teacher"].params
    for name in ("teacher.onnx", "student.onnx", "student.int8-dynamic.onnx", "student.int8-static.onnx"):
        assert 0 <= arts[name].metrics["accuracy"] <= 1
        assert arts[name].latency["x86-cpu"]["p50_ms"] > 0
    assert arts["student.onnx"].metrics["parity_max_abs_diff"] < 1e-3
    dynamic = arts["student.int8-dynamic.onnx"]
    assert dynamic.info["fused_ops"].get("Attention") == 2  # fused before quantizing ...
    assert dynamic.info["integer_ops"].get("QAttention") == 2  # ... so attention runs as one int8 kernel
    assert arts["student.int8-static.onnx"].info["integer_ops"]["QuantizeLinear"] > 0
    history = arts["student"].info["training"]["history"]
    assert {"loss_kd", "loss_ce", "loss_hidden", "loss_minilm"} <= set(history[-1])
    _the_ship_folder_runs_without_compress(result.report, tmp_path / "out", sst2_slice)


def _the_ship_folder_runs_without_compress(report: dict, out: Path, sst2_slice: Path) -> None:
    """The headline's ship folder loads with plain onnxruntime and the tokenizer (a fresh interpreter that never
    imports compress) and reproduces exactly the accuracy its card records on the first test examples."""
    [item] = report["headline"]
    folder = out / report["ship"]["x86-cpu"]
    facts = json.loads((folder / "ship.json").read_text())
    assert facts["artifact"] == item["artifact"] and (folder / "model.onnx").is_file()
    assert {"config.json", "tokenizer.json", "README.md", "recipe.yaml"} <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["compress_inputs"] == ["input_ids", "attention_mask"]
    check = facts["check"]
    assert check["examples"] == 64 and f"{check['correct']} correct" in (folder / "README.md").read_text()
    script = Path(__file__).parent / "fixtures" / "load_ship.py"
    done = subprocess.run([sys.executable, str(script), str(folder), str(sst2_slice / "test.tsv"), "64"],
                          capture_output=True, text=True, timeout=300, cwd=out)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"examples": 64, "correct": check["correct"]}


def sst2_config(folder: Path, *, max_length: int) -> DataConfig:
    return DataConfig(
        format="tsv",
        train=str(folder / "train.tsv"),
        dev=str(folder / "dev.tsv"),
        test=str(folder / "test.tsv"),
        max_length=max_length,
    )


def _tiny_setup(tiny_bert_dir: Path, sst2_slice: Path) -> tuple[TaskModel, TaskModel, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    family = FAMILIES.get("encoder")  # builds members with their feature taps (the `hidden` loss's default)
    teacher = family.build(ModelSource(hf=str(tiny_bert_dir)), num_labels=2, in_channels=None, base_dir=Path("."))
    student = family.build(
        ModelSource(bert=BertStudentSpec(layers=2, hidden=16, heads=2, ffn=32)),
        num_labels=2,
        in_channels=None,
        base_dir=Path("."),
        teacher=teacher,
    )
    cfg = sst2_config(sst2_slice, max_length=32)
    data = load_data(cfg, Path("."), teacher.tokenizer)
    return teacher, student, next(iter(data.train.loader(16)))


def test_distillation_loss_falls_and_gradients_reach_only_the_student(tiny_bert_dir: Path, sst2_slice: Path) -> None:
    teacher, student, batch = _tiny_setup(tiny_bert_dir, sst2_slice)
    teacher.module.requires_grad_(False)
    cfgs = [KDConfig(name="kd"), HiddenConfig(name="hidden"), MiniLMConfig(name="minilm", relation_heads=2)]
    terms = build_terms(cfgs, student, teacher, batch)  # hidden 16 vs 32: a learned projection is needed
    assert any(isinstance(m, torch.nn.Linear) for m in torch.nn.ModuleList(terms).modules())
    losses = train_terms(terms, student, teacher, batch)
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is None for p in teacher.module.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.module.parameters())


def test_bert_student_copies_the_chosen_teacher_layers(tiny_bert_dir: Path) -> None:
    teacher = build_model(
        ModelSource(hf=str(tiny_bert_dir)), modality="text", num_labels=2, in_channels=None, base_dir=Path(".")
    )
    student = build_bert_student(teacher.module, BertStudentSpec(layers=2, init_from_layers=[1, 3]))  # type: ignore[arg-type]
    t_layers, s_layers = teacher.module.bert.encoder.layer, student.bert.encoder.layer
    for s_i, t_i in enumerate([1, 3]):
        for (name, a), (_, b) in zip(
            s_layers[s_i].state_dict().items(), t_layers[t_i].state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight, teacher.module.bert.embeddings.word_embeddings.weight
    )
    assert student.config.num_hidden_layers == 2


def test_text_data_reads_real_sst2_with_dynamic_padding(sst2_slice: Path, tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    cfg = sst2_config(sst2_slice, max_length=16)
    data = load_data(cfg, Path("."), tok)
    assert (len(data.train), len(data.dev), len(data.test), data.num_labels) == (256, 64, 64, 2)
    batch = next(iter(data.train.loader(8)))
    width = batch["input_ids"].shape[1]
    assert width <= 16 and int(batch["attention_mask"].sum(1).max()) == width  # padded to the longest only
    assert set(np.unique(data.test.labels.numpy())) == {0, 1}


def train_terms(
    terms: list, student: TaskModel, teacher: TaskModel, batch: dict[str, torch.Tensor], steps: int = 15
) -> list[float]:
    """``steps`` AdamW steps of the student (and the terms' own projections) on one batch; the losses."""
    from compress.losses.taps import FeatureTaps

    s_paths = sorted({p for t in terms for p in t.student_paths})
    t_paths = sorted({p for t in terms for p in t.teacher_paths})
    params = list(student.module.parameters()) + list(torch.nn.ModuleList(terms).parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(steps):
        with FeatureTaps(student.module, s_paths) as sf:
            s = Captured(student.logits(batch), dict(sf))
        with FeatureTaps(teacher.module, t_paths) as tf:
            t = Captured(teacher.logits(batch), dict(tf))
        loss = sum(term.weight * term(s, t, batch) for term in terms)
        opt.zero_grad()
        loss.backward()
        losses.append(float(loss))
        opt.step()
    return losses
