"""SinKD and RKD as registered terms on a tiny BERT teacher and a narrower student over real SST-2: built by name,
their loss falls, gradients reach only the student; SinKD refuses sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.errors import StageError
from compress.losses import build_terms, loss_config_union
from compress.losses.relations import RkdConfig, SinkhornConfig
from compress.losses.terms import Captured
from tests.test_text_pipeline import _tiny_setup, train_terms


@pytest.mark.parametrize("config", [SinkhornConfig(name="sinkd", temperature=1.0), RkdConfig(name="rkd")])
def test_the_batch_losses_fall_and_train_only_the_student(config, tiny_bert_dir: Path, sst2_slice: Path) -> None:  # noqa: ANN001
    teacher, student, batch = _tiny_setup(tiny_bert_dir, sst2_slice)  # student hidden 16, teacher 32
    teacher.module.requires_grad_(False)
    terms = build_terms([config], student, teacher, batch)
    if config.name == "rkd":
        assert terms[0].pairs == [(student.features[-1], teacher.features[-1])]  # last layers, widths differ
    losses = train_terms(terms, student, teacher, batch)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in teacher.module.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.module.parameters())


def test_recipes_name_them_and_sinkd_refuses_sequences() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(loss_config_union())
    assert isinstance(adapter.validate_python({"name": "sinkd", "epsilon": 0.05}), SinkhornConfig)
    assert adapter.validate_python({"name": "rkd", "angle_weight": 0}).distance_weight == 25.0
    from compress.losses.relations import SinkhornTerm

    term = SinkhornTerm(SinkhornConfig(name="sinkd"))
    logits = torch.zeros(2, 5, 7)
    with pytest.raises(StageError, match="`sinkd` compares one class distribution per example"):
        term(Captured(logits), Captured(logits), {})
