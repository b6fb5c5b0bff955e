"""The causal-LM teacher cache: top-k log-probabilities per token, a full distribution rebuilt from them (exact
when k is the vocabulary), the mass kept, and its use in distillation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compress import pipeline
from compress.data.dataset import LmSplit
from compress.errors import CompressError
from compress.models.decoder import LlamaSpec, build_llama
from compress.models.task_model import TaskModel
from compress.training.teacher_cache import top_k_logprobs
from tests.conftest import lm_recipe_head, write_recipe

VOCAB = 50


@pytest.fixture(scope="module")
def teacher_and_split() -> tuple[TaskModel, LmSplit]:
    torch.manual_seed(0)
    module = build_llama(LlamaSpec(layers=1, hidden=16, heads=2, ffn=32, positions=32), VOCAB, 1, 0).eval()
    gen = torch.Generator().manual_seed(1)
    blocks = [torch.randint(2, VOCAB, (n,), generator=gen).tolist() for n in (12, 12, 7, 12, 3)]
    return TaskModel(module, "hf", "lm", VOCAB), LmSplit("train", blocks, pad_id=1)


def test_with_k_equal_to_the_vocabulary_the_cache_is_the_teacher(teacher_and_split) -> None:  # noqa: ANN001
    model, split = teacher_and_split
    cache = top_k_logprobs(model, split, VOCAB, batch_size=2)
    batch = split.collate([2, 0])
    with torch.no_grad():
        want = F.log_softmax(model.logits(batch), -1)
    got = cache.dense(batch["index"], batch["input_ids"].shape[1])
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], want[real], atol=2e-3)  # float16 storage
    assert cache.mass_kept([len(b) for b in split.features]) == pytest.approx(1.0, abs=1e-2)


def test_a_small_k_keeps_its_probabilities_and_spreads_the_rest(teacher_and_split) -> None:  # noqa: ANN001
    model, split = teacher_and_split
    cache = top_k_logprobs(model, split, 5, batch_size=4)
    assert cache.ids.shape == (5, 12, 5) and cache.ids.dtype == torch.int32
    batch = split.collate([0])
    with torch.no_grad():
        full = F.softmax(model.logits(batch), -1)[0]
    dense = cache.dense(batch["index"], 12)[0].exp()
    assert torch.allclose(dense.sum(-1), torch.ones(12), atol=1e-3)  # still a distribution
    top = full.topk(5, -1)
    assert torch.allclose(dense.gather(-1, top.indices), top.values, atol=2e-3)
    kept = cache.mass_kept([len(b) for b in split.features])
    assert 0 < kept < 1
    rest = dense.clone().scatter_(-1, top.indices, 0.0)
    assert torch.allclose(rest.max(-1).values, rest.sum(-1) / (VOCAB - 5), atol=1e-5)  # evenly spread


def test_distillation_reads_the_top_k_cache_and_reports_it(tmp_path: Path, pycode_slice: Path) -> None:
    text = lm_recipe_head("topk", pycode_slice) + """  - stage: distill
    student: {decoder: {layers: 1}}
    max_steps: 12
    batch_size: 16
    lr: 5.0e-3
    teacher_top_k: 16
    losses: [{name: skl}]
"""
    result = pipeline.run(write_recipe(tmp_path, text), tmp_path / "out")
    info = result.artifacts["student"].info
    assert info["teacher_cache"]["top_k"] == 16 and 0.3 < info["teacher_cache"]["mass_kept"] < 1
    assert info["training"]["last_loss"] < info["training"]["first_loss"]
    assert list((tmp_path / "out" / ".cache" / "teacher-top-k").glob("*.safetensors"))
    too_many = write_recipe(tmp_path, text.replace("teacher_top_k: 16", "teacher_top_k: 100000"), "big.yaml")
    with pytest.raises(CompressError, match=r"stages\[1\].teacher_top_k: 100000 is more than the vocabulary "
                                            r"data.tokenizer trains \(512 tokens\); give at most 512"):  # fmt: skip
        pipeline.validate(too_many)


def test_evaluation_batches_are_bounded_by_the_size_of_their_logits(teacher_and_split, monkeypatch) -> None:  # noqa: ANN001
    """A classifier's batch size (128) over a large vocabulary would hold gigabytes of logits at once: causal-LM
    evaluation and the teacher cache take as many blocks as `LOGITS_BUDGET` allows, with the same results."""
    from compress.data import dataset
    from compress.training.evaluate import lm_metrics

    model, split = teacher_and_split
    assert LmSplit("x", [[1] * 256], 0).logits_batch(128, 49152) == 10  # SmolLM2: 10 x 256 x 49,152 x 4 B < 512 MiB
    assert split.logits_batch(128, VOCAB) == 128
    whole = top_k_logprobs(model, split, 5, batch_size=128)
    metrics = lm_metrics(model, split, 128)
    monkeypatch.setattr(dataset, "LOGITS_BUDGET", 4 * 12 * VOCAB * 2)  # two blocks of 12 per batch
    assert split.logits_batch(128, VOCAB) == 2
    sizes: list[int] = []
    loader = LmSplit.loader
    monkeypatch.setattr(LmSplit, "loader", lambda self, n, **kw: sizes.append(n) or loader(self, n, **kw))
    small = top_k_logprobs(model, split, 5, batch_size=128)
    assert torch.equal(small.ids, whole.ids) and torch.allclose(small.logprobs.float(), whole.logprobs.float())
    assert lm_metrics(model, split, 128) == pytest.approx(metrics)
    assert sizes == [2, 2]
