"""Checkpoints and resume: a run stopped mid-way and re-run ends with the same weights, bit for bit, as one that
never stopped; checkpoints load without unpickling code; a finished phase is not trained again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress.config import TrainSchedule
from compress.data.config import DataConfig
from compress.data.dataset import load_data
from compress.families import family_of_source
from compress.losses.functional import ce_loss
from compress.models.source import ModelSource
from compress.models.task_model import TaskModel
from compress.training import checkpoint
from compress.training.engine import Engine, Session
from compress.training.loop import TrainResult, train
from tests.conftest import resumable_digits, write_recipe

SCHEDULE = TrainSchedule(max_steps=40, batch_size=32, lr=3e-3, warmup_steps=5, eval_every=15)


class Crash(Exception):
    pass


def _model() -> TaskModel:
    torch.manual_seed(0)
    src = ModelSource(cnn={"widths": [8, 16], "depths": [1, 1], "block": "resnet"})
    return family_of_source(src, "image", "test").build(src, num_labels=10, in_channels=1, base_dir=Path("."))


def _train(folder: Path | None, every: int = 10, crash_at: int | None = None) -> tuple[TaskModel, TrainResult]:
    data = load_data(DataConfig(format="sklearn_digits"), Path("."), None, 0)
    model = _model()
    engine = Engine(torch.device("cpu"), "fp32", "fp32", checkpoint_every=every)
    # a parameter outside the model with its own optimiser, as DPHuBERT's masks and Lagrange multipliers are
    gate = torch.nn.Parameter(torch.zeros(10))
    gate_opt = torch.optim.AdamW([gate], lr=0.05, weight_decay=0.0)

    def step(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model.logits(batch) + gate
        return ce_loss(logits, batch["labels"], label_smoothing=0.0) + 0.1 * gate.square().sum(), {}

    def on_step(n: int) -> None:
        if crash_at is not None and n == crash_at:
            raise Crash

    result = train(model, step, data.train, data.dev, SCHEDULE, session=Session(engine, 0, folder),
                   label="finetune teacher", on_step=on_step, extra_optimizers=(gate_opt,))  # fmt: skip
    model.module.register_buffer("gate", gate.detach().clone())  # compared with the weights
    return model, result


def _same_weights(a: TaskModel, b: TaskModel) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_resumed_run_ends_bit_identical(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    whole, whole_result = _train(None)
    with pytest.raises(Crash):
        _train(tmp_path, crash_at=25)  # after the checkpoints of steps 10 and 20, before that of step 30
    path = checkpoint.folder_for(tmp_path, "finetune teacher") / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)  # plain tensors and containers: no pickled code
    assert saved["step"] == 20 and not saved["done"]
    with caplog.at_level("INFO", logger="compress"):
        resumed, result = _train(tmp_path)
    assert "resumed from step 20" in caplog.text
    assert _same_weights(whole, resumed)
    assert result.history == whole_result.history and result.best_step == whole_result.best_step


def test_a_finished_phase_is_not_trained_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first, _ = _train(tmp_path)
    with caplog.at_level("INFO", logger="compress"):
        again, result = _train(tmp_path)
    assert "resumed from step 40 (finished)" in caplog.text
    assert _same_weights(first, again) and result.steps == 40


def test_a_damaged_checkpoint_costs_the_steps_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = checkpoint.folder_for(tmp_path, "finetune teacher") / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    whole, _ = _train(None)
    with caplog.at_level("WARNING", logger="compress"):
        model, _ = _train(tmp_path)
    assert "unreadable" in caplog.text and _same_weights(whole, model)


KILL_RECIPE = resumable_digits("resume", finetune_steps=20, distill_steps=400)


def _compress(recipe: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "compress", "run", str(recipe), "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = list(folder.glob(pattern))
        if hits:
            return hits[0]
        assert proc.poll() is None, f"the run ended before writing {pattern}:\n{proc.communicate()[0][-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} after {timeout} s")


def test_kill_9_in_the_middle_of_distill_then_resume(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, KILL_RECIPE)
    proc = _compress(recipe, tmp_path / "killed")
    _wait_for(".tmp-*-distill-*/checkpoints/distill/checkpoint.pt", tmp_path / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "killed").glob("[0-9][0-9]-distill-*"))  # nothing half-written is trusted
    again = _compress(recipe, tmp_path / "killed")
    log = again.communicate()[0]
    assert again.returncode == 0, log[-3000:]
    assert "distill: resumed from step" in log
    whole = _compress(recipe, tmp_path / "whole")
    assert whole.wait() == 0
    [a] = (tmp_path / "killed").glob("02-distill-*/student/model.safetensors")
    [b] = (tmp_path / "whole").glob("02-distill-*/student/model.safetensors")
    assert a.parent.parent.name == b.parent.parent.name and a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "killed").glob(".tmp-*"))  # the checkpoints go with the finished stage


def _lm_distill(folder: Path | None, crash_at: int | None = None) -> tuple[TaskModel, float]:
    """A tiny causal-LM distillation with TAID, whose schedule state lives in the loss term (checkpointed)."""
    from compress.data.dataset import LmSplit
    from compress.losses.sequence import TaidConfig, TaidTerm
    from compress.models.decoder import DecoderStudentSpec, LlamaSpec, build_decoder_student, build_llama
    from compress.training.distillation import distillation_step

    torch.manual_seed(0)
    teacher = TaskModel(build_llama(LlamaSpec(layers=2, hidden=16, heads=2, ffn=32, positions=32), 40, 1, 0).eval(),
                        "hf", "lm", 40)  # fmt: skip
    student = TaskModel(build_decoder_student(teacher.module, DecoderStudentSpec(layers=1)), "hf", "lm", 40)
    teacher.module.requires_grad_(False)
    gen = torch.Generator().manual_seed(3)
    blocks = [torch.randint(2, 40, (12,), generator=gen).tolist() for _ in range(64)]
    train_split, dev = LmSplit("train", blocks[:48], 1), LmSplit("dev", blocks[48:], 1)
    term = TaidTerm(TaidConfig(name="taid", alpha=0.05))
    step = distillation_step(student, teacher, [term], ["loss_taid"])
    schedule = TrainSchedule(max_steps=24, batch_size=8, lr=3e-3, eval_every=8)

    def on_step(n: int) -> None:
        term.advance(n, 24)
        if crash_at is not None and n == crash_at:
            raise Crash

    engine = Engine(torch.device("cpu"), "fp32", "fp32", checkpoint_every=10)
    train(student, step, train_split, dev, schedule, session=Session(engine, 0, folder), label="distill",
          extra=torch.nn.ModuleList([term]), on_step=on_step)  # fmt: skip
    return student, term.interpolation()


def test_a_resumed_taid_distillation_ends_bit_identical(tmp_path: Path) -> None:
    whole, t_whole = _lm_distill(None)
    with pytest.raises(Crash):
        _lm_distill(tmp_path, crash_at=15)
    resumed, t_resumed = _lm_distill(tmp_path)
    assert t_resumed == t_whole and 0.4 < t_whole <= 1.0  # TAID's t (a buffer of the loss term) resumed too
    assert _same_weights(whole, resumed)
