"""The engine's choices and refusals on this machine: devices, precisions, how a global batch is shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.config import TrainConfig
from compress.errors import RecipeError, StageError
from compress.training.engine import Engine, native_bf16
from tests.conftest import digits_recipe_head, write_recipe


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(device: str) -> None:
    with pytest.raises(RecipeError, match=rf"train.device: '{device}': .*Use `cpu` or `auto`"):
        Engine.create(TrainConfig(device=device), join=False)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_one_is_a_clear_error() -> None:
    with pytest.raises(RecipeError, match="no Apple GPU"):
        Engine.create(TrainConfig(device="mps"), join=False)


def test_auto_is_the_gpu_or_the_cpu() -> None:
    engine = Engine.create(TrainConfig(), join=False)
    assert engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (engine.rank, engine.world) == (0, 1)


def test_fp16_on_the_cpu_is_refused() -> None:
    with pytest.raises(RecipeError, match="train.precision: fp16 needs a GPU"):
        Engine.create(TrainConfig(device="cpu", precision="fp16"), join=False)


def test_bf16_on_a_cpu_is_native_or_falls_back_with_a_note() -> None:
    engine = Engine.create(TrainConfig(device="cpu", precision="bf16"), join=False)
    if native_bf16(torch.device("cpu")):
        assert engine.precision == "bf16" and not engine.notes
    else:
        assert engine.precision == "fp32" and engine.teacher_precision == "fp32"
        assert "no native bf16" in engine.notes[0] and "bf16 -> fp32" in engine.summary()


def test_a_device_name_that_does_not_exist_names_the_key(tmp_path: Path) -> None:
    recipe = digits_recipe_head("bad-device").replace("stages:", "train: {device: gpu0}\nstages:")
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+ train.device"):
        pipeline.validate(write_recipe(tmp_path, recipe))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_run_refuses_a_missing_gpu_before_any_work(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, digits_recipe_head("no-gpu").replace("stages:", "train: {device: cuda}\nstages:"))
    with pytest.raises(RecipeError, match="train.device"):
        pipeline.run(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_validate_says_where_training_runs(tmp_path: Path) -> None:
    found = pipeline.validate(write_recipe(tmp_path, digits_recipe_head("where")))
    assert any(line.startswith("train: training on cpu, fp32, 1 process") for line in found)


@pytest.mark.parametrize(("world", "accumulation", "n"), [(2, 1, 32), (2, 2, 32), (3, 2, 29), (4, 1, 5)])
def test_every_example_of_a_global_batch_is_run_once(world: int, accumulation: int, n: int) -> None:
    batch = torch.randperm(100)[:n]
    seen = []
    for rank in range(world):
        engine = Engine(torch.device("cpu"), "fp32", "fp32", accumulation=accumulation, rank=rank, world=world)
        micro = engine.my_micro_batches(batch)
        assert len(micro) == accumulation and all(len(m) > 0 for m in micro)
        seen += [int(i) for m in micro for i in m]
    assert seen == batch.tolist()  # in order: rank 0's share first


def test_a_batch_too_small_to_share_is_refused_with_the_numbers() -> None:
    engine = Engine(torch.device("cpu"), "fp32", "fp32", accumulation=2, rank=0, world=4)
    with pytest.raises(StageError, match="batch_size 4 cannot be split over 4 process.* 2 accumulation"):
        engine.check_batch(4, 1000, "distill")
    with pytest.raises(StageError, match="the training split has 6 examples, fewer than"):
        engine.check_batch(64, 6, "distill")
    engine.check_batch(8, 8, "distill")


def test_shards_cover_a_split_once() -> None:
    bounds = [Engine(torch.device("cpu"), "fp32", "fp32", rank=r, world=3).shard(10) for r in range(3)]
    assert bounds[0][0] == 0 and bounds[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))


def test_the_cache_key_ignores_device_and_processes_but_not_precision() -> None:
    one = Engine(torch.device("cpu"), "fp32", "fp32")
    four = Engine(torch.device("cpu"), "fp32", "fp32", rank=3, world=4, accumulation=2)
    assert one.key() == four.key() == {}
    assert Engine(torch.device("cpu"), "bf16", "fp32").key() == {"precision": "bf16"}


def test_a_batch_too_small_for_the_launched_processes_is_refused_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")  # what `torchrun --nproc_per_node 4` sets; checked before joining
    recipe = digits_recipe_head("split").replace("stages:", "train: {gradient_accumulation: 32}\nstages:")
    with pytest.raises(RecipeError, match=r"stages\[0\].batch_size: 64 cannot be split over 4 process.* 32 "):
        pipeline.validate(write_recipe(tmp_path, recipe))


def test_gradient_checkpointing_on_a_family_without_it_is_refused(tmp_path: Path) -> None:
    recipe = digits_recipe_head("ckpt").replace("stages:", "train: {gradient_checkpointing: true}\nstages:")
    with pytest.raises(RecipeError, match="train.gradient_checkpointing: this teacher .*cnn family.* set it to false"):
        pipeline.validate(write_recipe(tmp_path, recipe))


def test_gradient_checkpointing_trains_the_same_weights(tiny_bert_dir: Path) -> None:
    from compress.config import TrainSchedule
    from compress.data.dataset import Split
    from compress.families import family_of_source
    from compress.losses.functional import ce_loss
    from compress.models.source import ModelSource
    from compress.training.engine import Session
    from compress.training.loop import train

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 16, (48,), generator=gen).tolist()
    ids = [torch.randint(1000, 2000, (n,), generator=gen).tolist() for n in lengths]
    split = Split("train", ids, torch.randint(0, 2, (48,), generator=gen))
    weights = []
    for checkpointing in (False, True):
        src = ModelSource(hf=str(tiny_bert_dir))
        model = family_of_source(src, "text", "t").build(src, num_labels=2, in_channels=None, base_dir=Path("."))
        engine = Engine(torch.device("cpu"), "fp32", "fp32", gradient_checkpointing=checkpointing)

        def step(batch: dict, model=model) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: ANN001
            return ce_loss(model.logits(batch), batch["labels"], label_smoothing=0.0), {}

        train(model, step, split, split, TrainSchedule(max_steps=3, batch_size=16, lr=1e-3), session=Session(engine, 0))
        assert getattr(model.module, "is_gradient_checkpointing", False) == checkpointing
        weights.append(model.module.state_dict())
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-6) for k in weights[0])  # recomputed, same
