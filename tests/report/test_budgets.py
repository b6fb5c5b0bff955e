"""Budgets gate a run: checks per artifact x device x limit, junit.xml, GitHub summary, exit code 3."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from compress import pipeline
from compress.errors import BudgetError
from tests.conftest import DIGITS_RECIPE, write_recipe


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("budgets")
    pipeline.run(write_recipe(folder, DIGITS_RECIPE.replace("epochs: 3", "epochs: 1")), folder / "out")
    return folder


JUNIT_XSD = Path(__file__).resolve().parent.parent / "fixtures" / "junit.xsd"


def _valid_junit(path: Path) -> ET.Element:
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(path))  # raises on any schema violation
    return ET.parse(path).getroot()


def _with_budgets(folder: Path, budgets: str, name: str) -> Path:
    return write_recipe(folder, DIGITS_RECIPE.replace("epochs: 3", "epochs: 1") + budgets, name)


def test_met_budgets_pass_and_write_junit(cached_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = cached_run / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    recipe = _with_budgets(
        cached_run, "budgets:\n  x86-cpu: {p90_ms: 1000, size_mb: 100, accuracy_drop: 100}\n", "ok.yaml"
    )
    result = pipeline.run(recipe, cached_run / "out")
    assert all(s.cached for s in result.stages)  # budgets do not invalidate any stage
    checks = result.report["budgets"]
    assert len(checks) == 3 * 3 and all(c["passed"] for c in checks)  # 3 student ONNX artifacts x 3 limits
    suite = _valid_junit(cached_run / "out" / "junit.xml")
    assert suite.get("tests") == "9" and suite.get("failures") == "0"
    assert len(suite.findall("./testsuite/testcase")) == 9
    assert "| student.onnx | x86-cpu | p90_ms |" in summary.read_text()
    md = (cached_run / "out" / "report.md").read_text()  # which runtime, version, provider, CPU; the plot
    assert "## Measurement" in md and "- **x86-cpu**: onnxruntime 1." in md and "CPUExecutionProvider" in md
    assert "Where the time goes" in md and "![accuracy against latency](pareto.png)" in md
    assert (cached_run / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_junit_schema_rejects_a_malformed_file(tmp_path: Path) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites><testsuite name="s" tests="1"><testcase classname="c"/></testsuite></testsuites>')
    with pytest.raises(xmlschema.XMLSchemaValidationError):  # a testcase needs a name
        _valid_junit(bad)


def test_missed_budget_fails_with_exit_code_3_after_writing_reports(cached_run: Path) -> None:
    budgets = "budgets:\n  x86-cpu: {p50_ms: 0.000001, artifacts: ['student.int8-*']}\n"
    recipe = _with_budgets(cached_run, budgets, "tight.yaml")
    with pytest.raises(BudgetError, match=r"2 of 2 budget checks missed") as info:
        pipeline.run(recipe, cached_run / "out")
    assert info.value.exit_code == 3
    report = json.loads((cached_run / "out" / "report.json").read_text())
    assert {c["artifact"] for c in report["budgets"]} == {"student.int8-dynamic.onnx", "student.int8-static.onnx"}
    suite = _valid_junit(cached_run / "out" / "junit.xml")
    assert suite.get("failures") == "2"
    proc = subprocess.run(
        [sys.executable, "-m", "compress", "run", str(recipe), "--out", str(cached_run / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3 and "MISSED" in proc.stderr and "Traceback" not in proc.stderr


def test_budget_on_a_device_no_stage_profiles_is_rejected_before_work(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, DIGITS_RECIPE + "budgets:\n  x86-cpu-1thread: {p90_ms: 1}\n")
    with pytest.raises(Exception, match=r"budgets.x86-cpu-1thread: no profile stage measures this device"):
        pipeline.run(recipe, tmp_path / "out")
    assert not list((tmp_path / "out").glob("00-*"))


def test_budget_pattern_that_matches_nothing_fails_the_gate(cached_run: Path) -> None:
    """A typo in `artifacts` must not silently turn the CI gate off."""
    budgets = "budgets:\n  x86-cpu: {p90_ms: 1000, artifacts: ['studnet.onnx', 'student.onnx']}\n"
    recipe = _with_budgets(cached_run, budgets, "typo.yaml")
    with pytest.raises(BudgetError, match=r"1 of 2 budget checks missed") as info:
        pipeline.run(recipe, cached_run / "out")
    assert "budgets.x86-cpu.artifacts: 'studnet.onnx' matches no onnx artifact" in str(info.value)
    assert "student.int8-dynamic.onnx" in str(info.value)  # the names it could have meant
    assert _valid_junit(cached_run / "out" / "junit.xml").get("failures") == "1"


def test_budgets_apply_where_the_format_runs_and_unmeasured_is_not_a_miss() -> None:
    from compress.report.budgets import Budget, evaluate

    def row(name: str, fmt: str, latency: dict) -> dict:
        return {"name": name, "format": fmt, "size_bytes": 10**6, "metrics": {"accuracy": 0.9}, "latency": latency}

    report = {"artifacts": [
        row("teacher.onnx", "onnx", {"x86-cpu": {"p50_ms": 9.0}}),
        row("student.onnx", "onnx", {"x86-cpu": {"p50_ms": 1.0}}),
        row("student.xnnpack.pte", "executorch", {"executorch-xnnpack": {"p50_ms": 2.0}}),
        row("student.int8-dynamic.onnx", "onnx", {}),  # exported after the last profile (--only export)
    ]}  # fmt: skip
    budget = {"x86-cpu": Budget(p50_ms=1.5), "executorch-xnnpack": Budget(p50_ms=1.5)}
    checks = evaluate(report, budget, {"x86-cpu": "onnx", "executorch-xnnpack": "executorch"})
    by = {(c["artifact"], c["device"]): c["status"] for c in checks}
    assert by == {
        ("student.onnx", "x86-cpu"): "ok",
        ("student.int8-dynamic.onnx", "x86-cpu"): "not measured",  # reported, not a miss
        ("student.xnnpack.pte", "executorch-xnnpack"): "missed",  # 2.0 > 1.5, on its own runtime
    }  # no .pte held to x86-cpu, no .onnx to executorch-xnnpack
    assert [c["passed"] for c in checks].count(False) == 1


def test_generation_limits_tokens_per_second_is_a_minimum_and_perplexity_is_relative() -> None:
    from compress.report.budgets import Budget, describe, evaluate

    rows = [
        {"name": "teacher.onnx", "format": "onnx", "size_bytes": 10**6, "metrics": {"perplexity": 10.0},
         "latency": {"x86-cpu": {"p50_ms": 10.0, "tokens_per_s": 100.0, "ttft_p50_ms": 50.0}}},
        {"name": "student.int4.onnx", "format": "onnx", "size_bytes": 10**5, "metrics": {"perplexity": 11.5},
         "latency": {"x86-cpu": {"p50_ms": 2.5, "tokens_per_s": 400.0, "ttft_p50_ms": 12.0}}},
    ]  # fmt: skip
    budget = Budget(tokens_per_s=500, ttft_ms=20, perplexity_increase=10)
    checks = {c["limit"]: c for c in evaluate({"artifacts": rows}, {"x86-cpu": budget})}
    assert checks["tokens_per_s"]["status"] == "missed"  # 400 tokens/s < the 500 asked for
    assert "tokens_per_s 400.000 (at least 500) MISSED" in describe(checks["tokens_per_s"])
    assert checks["ttft_ms"]["passed"]
    assert checks["perplexity_increase"]["measured"] == pytest.approx(15.0)
    assert checks["perplexity_increase"]["status"] == "missed"
    relaxed = evaluate({"artifacts": rows}, {"x86-cpu": Budget(tokens_per_s=300, perplexity_increase=20)})
    assert all(c["passed"] for c in relaxed)


def test_speedup_divides_the_teachers_p50_on_the_reference_and_needs_it() -> None:
    from compress.report.budgets import Budget, describe, evaluate

    def row(name: str, latency: dict) -> dict:
        return {"name": name, "format": "onnx", "size_bytes": 10**6, "metrics": {"accuracy": 0.9}, "latency": latency}

    rows = [row("teacher.onnx", {"x86-cpu": {"p50_ms": 16.0}, "openvino-cpu": {"p50_ms": 8.0}}),
            row("student.int8-static.onnx", {"openvino-cpu": {"p50_ms": 2.5}})]  # fmt: skip
    budget = {"openvino-cpu": Budget(speedup=6, reference="x86-cpu", artifacts=["student.*"])}
    [check] = evaluate({"artifacts": rows}, budget)
    assert check["measured"] == pytest.approx(6.4) and check["passed"]  # 16 ms on x86-cpu over 2.5 ms here
    assert "speedup 6.400 (at least 6) ok" in describe(check)
    [check] = evaluate({"artifacts": rows}, {"openvino-cpu": Budget(speedup=6, artifacts=["student.*"])})
    assert check["measured"] == pytest.approx(3.2) and not check["passed"]  # against the teacher on OpenVINO
    checks = evaluate({"artifacts": rows[1:]}, budget)  # the teacher was not profiled: a miss that says why
    assert [c["status"] for c in checks] == ["missed", "not measured"]
    assert "budgets.openvino-cpu.speedup: the teacher's fp32 ONNX has no p50 on x86-cpu" in describe(checks[0])
