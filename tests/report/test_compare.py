"""`compress compare`: a regression is a shift beyond the noise measured in the two runs, not a percentage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compress.report.compare import compare
from tests.test_cli import cli


def _report(p50: float, spread: float, seed: int, n: int = 100) -> dict:
    samples = (p50 + spread * np.random.default_rng(seed).standard_normal(n)).tolist()
    stats = {"p50_ms": float(np.median(samples)), "std_ms": float(np.std(samples)), "runs": n, "samples_ms": samples}
    return {"artifacts": [{"name": "student.onnx", "latency": {"x86-cpu": stats}}]}


def _verdict(old: dict, new: dict) -> str:
    return compare(old, new)[0]["verdict"]


def test_same_distribution_is_within_noise() -> None:
    assert _verdict(_report(5.0, 0.2, 0), _report(5.0, 0.2, 1)) == "within noise"


def test_small_shift_on_a_quiet_machine_is_a_regression() -> None:
    assert _verdict(_report(5.0, 0.02, 0), _report(5.1, 0.02, 1)) == "regression"  # +2%, noise 0.4%


def test_larger_shift_on_a_noisy_machine_is_not() -> None:
    assert _verdict(_report(5.0, 1.5, 0), _report(5.25, 1.5, 1)) == "within noise"  # +5%, noise 30%


def test_speedup_is_an_improvement_and_old_reports_fall_back_to_the_normal_approximation() -> None:
    old, new = _report(5.0, 0.1, 0), _report(4.0, 0.1, 1)
    assert _verdict(old, new) == "improvement"
    for rep in (old, new):
        del rep["artifacts"][0]["latency"]["x86-cpu"]["samples_ms"]
    row = compare(old, new)[0]
    assert row["method"] == "normal" and row["verdict"] == "improvement"


def test_cli_exits_4_on_a_regression(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_report(5.0, 0.02, 0)))
    new.write_text(json.dumps(_report(5.5, 0.02, 1)))
    proc = cli("compare", str(old), str(new))
    assert proc.returncode == 4
    assert "| student.onnx | x86-cpu |" in proc.stdout and "**regression**" in proc.stdout
    assert "worst: student.onnx on x86-cpu" in proc.stdout + proc.stderr
    assert cli("compare", str(old), str(old)).returncode == 0
    bad = cli("compare", str(old), str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "not a readable report.json" in bad.stdout + bad.stderr
