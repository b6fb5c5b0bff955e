"""DisWOT: deterministic per seed, zero distance for the teacher itself, relation geometry as in the paper."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.data.config import DataConfig
from compress.data.dataset import load_data
from compress.families import family_of
from compress.models.cnn import CNN, CnnSpec
from compress.models.task_model import TaskModel
from compress.search.candidates import build_candidate
from compress.search.diswot import diswot_score, gram, last_feature_path, signature
from compress.search.space import CnnSpace

SPACE = CnnSpace(block=["plain", "resnet"], stages=[2], depth=[1], width=[8, 16, 32], kernel=[3])


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201
    return load_data(DataConfig(format="sklearn_digits"), ".", None, 0)


@pytest.fixture(scope="module")
def teacher(digits) -> TaskModel:  # noqa: ANN001
    """A CNN trained for a few hundred steps on digits (DisWOT compares against a *trained* teacher)."""
    torch.manual_seed(0)
    spec = CnnSpec(widths=[16, 32], block="resnet", in_channels=1, num_classes=10)
    model = TaskModel(CNN(spec), "cnn", "image", 10, None, spec.model_dump())
    opt = torch.optim.Adam(model.module.parameters(), lr=3e-3)
    model.module.train()
    for _ in range(8):
        for batch in digits.train.loader(64, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model.logits(batch), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.module.eval()
    family_of(model)  # the cnn family names its feature taps
    return model


def _score(teacher: TaskModel, student: TaskModel, batch: dict, candidate: bool = True) -> dict[str, float]:
    family_of(student)
    t = signature(teacher, batch, last_feature_path(teacher))
    return diswot_score(t, signature(student, batch, last_feature_path(student), candidate=candidate))


def test_score_is_deterministic_for_a_seed(teacher: TaskModel, digits) -> None:  # noqa: ANN001
    batch = next(iter(digits.train.loader(32)))
    arch = {"block": "plain", "kernel": 3, "expansion": 1, "widths": [8, 16], "depths": [1, 1]}
    a = _score(teacher, build_candidate(SPACE, arch, teacher, in_channels=1, seed=3), batch)
    b = _score(teacher, build_candidate(SPACE, arch, teacher, in_channels=1, seed=3), batch)
    c = _score(teacher, build_candidate(SPACE, arch, teacher, in_channels=1, seed=4), batch)
    assert a == b and a != c


def test_better_matching_student_scores_higher(teacher: TaskModel, digits) -> None:  # noqa: ANN001
    batch = next(iter(digits.train.loader(64)))
    same = _score(teacher, copy.deepcopy(teacher), batch, candidate=False)
    assert same["semantic"] == pytest.approx(0, abs=1e-5) and same["relation"] == pytest.approx(0, abs=1e-5)
    arch = {"block": "resnet", "kernel": 3, "expansion": 1, "widths": [16, 32], "depths": [1, 1]}
    random_twin = _score(teacher, build_candidate(SPACE, arch, teacher, in_channels=1, seed=0), batch)
    assert same["score"] > random_twin["score"]
    # a student that has learnt from the teacher matches it better than the same net at random init
    trained = build_candidate(SPACE, arch, teacher, in_channels=1, seed=0)
    opt = torch.optim.Adam(trained.module.parameters(), lr=3e-3)
    trained.module.train()
    for b in digits.train.loader(64, shuffle=True):
        with torch.no_grad():
            t = teacher.logits(b)
        loss = torch.nn.functional.kl_div(
            trained.logits(b).log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean"
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained.module.eval()
    assert _score(teacher, trained, batch, candidate=False)["score"] > random_twin["score"]


def test_gram_rows_are_unit_norm_and_scale_free() -> None:
    x = torch.randn(5, 7)
    g = gram(x)
    assert torch.allclose(g.norm(dim=1), torch.ones(5))
    assert torch.allclose(gram(3 * x), g, atol=1e-6)


def test_teacher_gets_no_gradient(teacher: TaskModel, digits) -> None:  # noqa: ANN001
    teacher.module.zero_grad(set_to_none=True)
    signature(teacher, next(iter(digits.train.loader(8))), last_feature_path(teacher))
    assert all(p.grad is None for p in teacher.module.parameters())
