"""Two processes (torchrun, gloo) against one: every training stage on a tiny model gives the same metrics with
the same global batch, only rank 0 writes, the cache is shared across world sizes, a killed rank ends the run and
`accelerate launch` resumes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import minilm_path, resumable_digits, text_recipe_head, write_recipe

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")

STAGES = """train: {{checkpoint_every: 4}}
stages:
  - stage: finetune
    max_steps: 6
    batch_size: 16
    lr: 1.0e-3
    eval_every: 3
  - stage: distill
    student: {{bert: {{layers: 2, init_from_layers: [1, 3]}}}}
    max_steps: 6
    batch_size: 16
    lr: 1.0e-3
    losses:
      - {{name: kd, temperature: 2.0}}
      - {{name: ce, weight: 0.5}}
  - stage: prune
    source: student
    target: {{params: 0.7}}
    max_steps: 6
    batch_size: 16
    mask_lr: 0.1
    lambda_lr: 0.1
    finetune: {{max_steps: 2, batch_size: 16}}
  - stage: quantize
    method: qat
    source: student
    max_steps: 2
    batch_size: 16
  - stage: moefy
    source: teacher
    experts: 4
    calibration_tokens: 1000
    router: {{steps: 10, batch_tokens: 256}}
    policy: {{top_k: 2}}
    finetune: {{max_steps: 2, batch_size: 16}}
"""


@pytest.fixture(scope="module")
def bert_no_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT without dropout: one process and two then compute the same function of the same batches."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("bert-no-dropout")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(recipe: Path, out: Path, nproc: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "compress", "run", str(recipe), "--out", str(out)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)


def _metrics(out: Path) -> dict[str, float]:
    report = json.loads((out / "report.json").read_text())
    return {a["name"]: a["metrics"]["accuracy"] for a in report["artifacts"] if "accuracy" in a["metrics"]}


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every model each stage trained, by stage and artifact name."""
    from safetensors.torch import load_file

    manifest = json.loads((out / "manifest.json").read_text())
    found = {}
    for a in manifest["history"]:
        files = sorted((out / a["path"]).glob("*.safetensors")) if (out / a["path"]).is_dir() else []
        if files and a["stage"] != "teacher":
            found[f"{a['stage']}:{a['name']}"] = load_file(str(files[0]))
    return found


def test_two_processes_match_one_and_share_the_cache(tmp_path: Path, bert_no_dropout: Path, sst2_slice: Path) -> None:
    recipe = write_recipe(tmp_path, (text_recipe_head("ddp") + STAGES).format(data=sst2_slice, teacher=bert_no_dropout))
    one = _run(recipe, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-4000:]
    two = _run(recipe, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-4000:]
    m1, m2 = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert set(m1) == set(m2) >= {"teacher", "student", "student.int8-qat.onnx", "teacher.moe"}
    n_test = 64
    for name in m1:  # the same global batches: equal up to float summation order (one test example at most)
        assert abs(m1[name] - m2[name]) <= 1.0 / n_test + 1e-6, (name, m1[name], m2[name])
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(w1) == set(w2) >= {"finetune:teacher", "distill:student", "prune:student", "moefy:teacher.moe"}
    for key in ("finetune:teacher", "distill:student", "moefy:teacher.moe"):  # per-example losses: the averaged
        for name, tensor in w1[key].items():  # gradient is the global batch's, step by step
            assert torch.allclose(tensor, w2[key][name], rtol=1e-4, atol=1e-6), (key, name)
    # DPHuBERT's layer-to-layer loss is a mean over each process's tokens (as in any DDP trainer): close, and
    # the pruned structure is the same
    assert {n: t.shape for n, t in w1["prune:student"].items()} == {n: t.shape for n, t in w2["prune:student"].items()}
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2 and manifest["training"]["backend"] == "gloo"
    assert "training on cpu, fp32, 2 processes (DDP, gloo)" in two.stderr
    assert two.stderr.count("stage 2 distill: running") == 1  # rank 0 speaks; rank 1 only warns
    assert not list((tmp_path / "two").glob(".tmp-*"))  # rank 1's scratch folders are gone too
    # the key of every stage ignores the number of processes: one process reuses what two made
    again = _run(recipe, tmp_path / "two", 1)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count(": cached (") == 6, again.stderr[-4000:]  # the teacher and five stages


KILL_RECIPE = resumable_digits("ddp-kill", finetune_steps=10, distill_steps=400)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the launched worker with RANK=``rank`` among ``parent``'s children."""
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text().split()
            if int(stat[3]) == parent and f"RANK={rank}\0" in (child / "environ").read_text(errors="replace"):
                return int(child.name)
        except (OSError, IndexError, ValueError):
            continue
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker")
def test_a_killed_rank_ends_the_run_and_an_accelerate_launch_resumes_it(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, KILL_RECIPE)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "compress", "run", str(recipe), "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob(".tmp-*-distill-*/checkpoints/distill/checkpoint.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0  # the launcher ends rank 0 too, and says which rank failed
    assert not list(out.glob("[0-9][0-9]-distill-*"))  # no half-written stage is trusted
    # the rerun goes through `accelerate launch` (its multi-process launcher, which also runs on CPUs): it sets the
    # same variables as torchrun, and the two new processes resume from the checkpoint the killed ones wrote
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None, "accelerate (a dependency) has no launcher beside this Python"
    again = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "compress", "run",
                            str(recipe), "--out", str(out)], env=_env(), capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "distill: resumed from step" in again.stderr, log[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2


LM_STAGES = """  - stage: distill
    student: {decoder: {layers: 1}}
    max_steps: 12
    batch_size: 16
    lr: 5.0e-3
    eval_every: 6
    teacher_top_k: 8
    losses: [{name: taid}]
"""


def test_two_processes_distil_a_causal_lm_like_one(tmp_path: Path, pycode_slice: Path) -> None:
    """Two processes reuse one process's teacher (stage keys ignore the world size), compute the top-k teacher
    cache shard-wise and gather the same one; token-level losses are means over each process's tokens, so the
    students agree closely rather than bit for bit."""
    import shutil

    from safetensors.torch import load_file

    from tests.conftest import lm_recipe_head

    recipe = write_recipe(tmp_path, lm_recipe_head("ddp-lm", pycode_slice) + LM_STAGES)
    one = _run(recipe, tmp_path / "p1", 1)
    assert one.returncode == 0, one.stderr[-4000:]
    shutil.copytree(tmp_path / "p1", tmp_path / "p2", symlinks=True)
    for stale in [*(tmp_path / "p2").glob("*-distill-*"), tmp_path / "p2" / ".cache" / "teacher-top-k"]:
        shutil.rmtree(stale)
    two = _run(recipe, tmp_path / "p2", 2)
    assert two.returncode == 0, two.stderr[-4000:]
    assert two.stderr.count(": cached (") == 2  # the teacher and its pre-training, from the one-process run
    caches = [load_file(str(next((tmp_path / p / ".cache" / "teacher-top-k").glob("*.safetensors"))))
              for p in ("p1", "p2")]  # fmt: skip
    same = caches[0]["ids"] == caches[1]["ids"]
    assert caches[0]["ids"].shape == caches[1]["ids"].shape and same.float().mean() > 0.99  # near-ties may swap
    assert torch.allclose(caches[0]["logprobs"].float()[same], caches[1]["logprobs"].float()[same], atol=2e-3)
    ppl = [{a["name"]: a["metrics"]["perplexity"] for a in json.loads((tmp_path / p / "report.json").read_text())[
        "artifacts"]} for p in ("p1", "p2")]  # fmt: skip
    assert ppl[0]["student"] == pytest.approx(ppl[1]["student"], rel=0.02)
