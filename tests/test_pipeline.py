"""The whole pipeline on a seconds-long digits recipe: artifacts, report, manifest, cache, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import pipeline
from compress.errors import ExportError, RecipeError, StageError
from compress.families import load as load_model


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> pipeline.RunResult:
    from tests.conftest import DIGITS_RECIPE, write_recipe

    folder = tmp_path_factory.mktemp("digits")
    recipe = write_recipe(folder, DIGITS_RECIPE)
    return pipeline.run(recipe, folder / "out")


def test_every_stage_produces_its_artifacts(digits_run: pipeline.RunResult) -> None:
    names = set(digits_run.artifacts)
    assert {
        "teacher",
        "student",
        "teacher.onnx",
        "student.onnx",
        "student.int8-dynamic.onnx",
        "student.int8-static.onnx",
    } <= names
    teacher, student = digits_run.artifacts["teacher"], digits_run.artifacts["student"]
    assert student.params < teacher.params / 4
    assert teacher.metrics["accuracy"] > 0.8  # trained for real on real digits
    assert student.metrics["accuracy"] > 0.5
    assert student.info["training"]["last_loss"] < student.info["training"]["first_loss"]


def test_report_has_the_promised_fields(digits_run: pipeline.RunResult) -> None:
    report = json.loads((digits_run.out_dir / "report.json").read_text())
    assert report["recipe"]["name"] == "tiny-digits"
    onnx_rows = [a for a in report["artifacts"] if a["format"] == "onnx"]
    assert len(onnx_rows) == 6
    for a in report["artifacts"]:
        assert {"name", "path", "format", "params", "size_bytes", "metrics"} <= set(a)
        assert 0 <= a["metrics"]["accuracy"] <= 1
    for a in onnx_rows:
        lat = a["latency"]["x86-cpu"]
        assert 0 < lat["p50_ms"] <= lat["p90_ms"]
        assert (digits_run.out_dir / a["path"]).is_file()
    int8 = next(a for a in onnx_rows if a["name"] == "student.int8-static.onnx")
    assert int8["latency"]["x86-cpu"]["baseline"] == "student.onnx"
    md = (digits_run.out_dir / "report.md").read_text()
    assert "student.int8-static.onnx" in md


def test_manifest_lists_hashes_timings_and_environment(digits_run: pipeline.RunResult) -> None:
    manifest = json.loads((digits_run.out_dir / "manifest.json").read_text())
    assert [s["stage"] for s in manifest["stages"]] == ["teacher", "finetune", "distill", "export", "profile"]
    assert all(len(a["sha256"]) == 64 and a["size_bytes"] > 0 for a in manifest["artifacts"])
    assert manifest["environment"]["packages"]["torch"]
    assert "cpu" in manifest["environment"]
    assert (digits_run.out_dir / "compress.log").read_text().count("stage 2 distill") >= 1


def test_saved_student_reloads_with_identical_outputs(digits_run: pipeline.RunResult) -> None:
    art = digits_run.artifacts["student"]
    a, b = load_model(art.path), load_model(art.path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(a.logits({"pixel_values": x}), b.logits({"pixel_values": x}))


def test_rerun_is_served_from_cache(digits_run: pipeline.RunResult) -> None:
    recipe = Path(digits_run.out_dir).parent / "recipe.yaml"
    again = pipeline.run(recipe, digits_run.out_dir)
    assert all(s.cached for s in again.stages)
    assert again.artifacts["student"].sha256 == digits_run.artifacts["student"].sha256


def test_only_reruns_one_stage(digits_run: pipeline.RunResult) -> None:
    recipe = Path(digits_run.out_dir).parent / "recipe.yaml"
    again = pipeline.run(recipe, digits_run.out_dir, only="profile")
    assert [s.cached for s in again.stages] == [True, True, True, True, False]


def test_interrupted_stage_leaves_nothing_trusted_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import DIGITS_RECIPE, write_recipe

    recipe = write_recipe(tmp_path, DIGITS_RECIPE.replace("epochs: 3", "epochs: 1"))
    out = tmp_path / "out"

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash inside the exporter")

    monkeypatch.setattr(torch.onnx, "export", crash)
    with pytest.raises(ExportError, match="does not export"):
        pipeline.run(recipe, out)
    assert not list(out.glob("03-export-*")), "a failed stage must not leave a folder a later run trusts"
    assert not list(out.glob(".tmp-*"))
    monkeypatch.undo()
    resumed = pipeline.run(recipe, out)
    assert [s.cached for s in resumed.stages] == [True, True, True, False, False]


def test_only_without_cache_is_a_clear_error(tmp_path: Path) -> None:
    from tests.conftest import DIGITS_RECIPE, write_recipe

    recipe = write_recipe(tmp_path, DIGITS_RECIPE)
    with pytest.raises(StageError, match="no cached output"):
        pipeline.run(recipe, tmp_path / "out", only="export")


def test_only_an_earlier_stage_keeps_the_later_cached_measurements(digits_run: pipeline.RunResult) -> None:
    """`--only export` re-runs the export; the profile stage after it is still valid (same ONNX bytes), so the
    report keeps its latencies instead of being rewritten without them."""
    recipe = Path(digits_run.out_dir).parent / "recipe.yaml"
    again = pipeline.run(recipe, digits_run.out_dir, only="export")
    assert [s.cached for s in again.stages] == [True, True, True, False, True]
    assert again.report["artifacts"] and all(
        r["latency"].get("x86-cpu") for r in again.report["artifacts"] if r["format"] == "onnx"
    )
    with pytest.raises(RecipeError, match="--only and --from together"):
        pipeline.run(recipe, digits_run.out_dir, only="export", from_stage="distill")


def test_report_opens_with_the_artifact_to_ship(digits_run: pipeline.RunResult) -> None:
    [item] = digits_run.report["headline"]
    rows = {r["name"]: r for r in digits_run.report["artifacts"]}

    def p50(name: str) -> float:
        return float(rows[name]["latency"]["x86-cpu"]["p50_ms"])

    # no budget: the fastest within 1 point of the teacher (the teacher's own file counts), or a simpler file
    # within the 1.05x noise band of it
    teacher = rows["teacher.onnx"]["metrics"]["accuracy"]
    measured = [n for n, r in rows.items() if r["latency"].get("x86-cpu")]
    close = [n for n in measured if 100 * (teacher - rows[n]["metrics"]["accuracy"]) <= 1]
    assert item["device"] == "x86-cpu" and item["artifact"] in close and item["budgets"] == "no budget"
    assert p50(item["artifact"]) <= 1.05**2 * min(p50(n) for n in close)
    assert item["speedup_vs_teacher"] == pytest.approx(
        rows["teacher.onnx"]["latency"]["x86-cpu"]["p50_ms"] / rows[item["artifact"]]["latency"]["x86-cpu"]["p50_ms"]
    )
    # the files on disk agree with each other (another test re-profiles into this folder: re-read, not `item`)
    [written] = json.loads((digits_run.out_dir / "report.json").read_text())["headline"]
    md = (digits_run.out_dir / "report.md").read_text().splitlines()
    assert md[2].startswith(f"- **x86-cpu**: ship `{written['artifact']}`")
