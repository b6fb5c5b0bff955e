"""Registered loss terms on real (tiny) models: DPHuBERT's layer-to-layer loss distils a student narrower than its
teacher through learned projections (DistilHuBERT's prediction heads), as after a search."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

from compress.families import family_of
from compress.losses import build_terms
from compress.losses.terms import L1CosineConfig
from compress.models.task_model import TaskModel
from compress.training.distillation import distillation_step


def _bert(hidden: int, seed: int) -> TaskModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=2)  # fmt: skip
    model = TaskModel(BertForSequenceClassification(cfg), "hf", "text", 2)
    family_of(model)
    return model


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (8, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[4:, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (8,), generator=g)}


def test_l1_cosine_learns_projections_when_the_student_is_narrower() -> None:
    student, teacher = _bert(32, 0), _bert(64, 1)
    teacher.module.eval().requires_grad_(False)
    batch = _batch()
    (term,) = build_terms([L1CosineConfig(name="l1_cosine", weight=1.0)], student, teacher, batch)
    assert [tuple(p.weight.shape) for p in term.projectors] == [(64, 32), (64, 32)]
    step = distillation_step(student, teacher, [term], ["l1_cosine"])
    params = [*student.module.parameters(), *term.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = step(batch)
        opt.zero_grad()
        loss.backward()
        losses.append(float(loss))
        opt.step()
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for p in term.parameters())
    assert all(p.grad is None for p in teacher.module.parameters())


def test_l1_cosine_of_equal_widths_compares_hidden_states_directly() -> None:
    student, teacher = _bert(32, 0), _bert(32, 1)
    (term,) = build_terms([L1CosineConfig(name="l1_cosine", weight=1.0)], student, teacher, _batch())
    assert not list(term.parameters())  # identities: DPHuBERT's own setting, unchanged
