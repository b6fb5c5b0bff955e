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
    assert _verdict(_report(5.0, 0.02, 0), _report(5.15, 0.02, 1)) == "regression"  # +3%, noise 0.4%, floor 2%


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
    assert bad.returncode == 2 and "missing.json does not exist" in bad.stdout + bad.stderr


def _bad_reports(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """Each malformed input to `compare` and the message it must give."""
    good = _report(5.0, 0.02, 0)
    no_p50 = json.loads(json.dumps(good))
    del no_p50["artifacts"][0]["latency"]["x86-cpu"]["p50_ms"]
    zero = json.loads(json.dumps(good))
    zero["artifacts"][0]["latency"]["x86-cpu"]["p50_ms"] = 0
    text_samples = json.loads(json.dumps(good))
    text_samples["artifacts"][0]["latency"]["x86-cpu"]["samples_ms"][3] = "fast"
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    return {
        "picture.png": (png, "picture.png:1 is not UTF-8 text"),
        "list.json": (b"[1, 2, 3]", "not a compress report.json (expected an object with an `artifacts` list)"),
        "artifacts.json": (b'{"artifacts": {"a": 1}}', "expected an object with an `artifacts` list"),
        "no-name.json": (b'{"artifacts": [{"latency": {}}]}', "artifacts[0]: expected an object with a `name`"),
        "no-p50.json": (json.dumps(no_p50).encode(), "artifacts[0].latency.x86-cpu.p50_ms: missing"),
        "zero.json": (json.dumps(zero).encode(), "artifacts[0].latency.x86-cpu.p50_ms: 0; a latency must be above 0"),
        "text.json": (json.dumps(text_samples).encode(), "x86-cpu.samples_ms[3]: 'fast' is not a number"),
        "truncated.json": (json.dumps(good).encode()[:40], "not a readable report.json (invalid JSON"),
        "deep.json": (b"[" * 100000 + b"]" * 100000, "not a readable report.json (invalid JSON"),
    }


def test_malformed_reports_are_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report(5.0, 0.02, 0)))
    for name, (content, message) in _bad_reports(tmp_path).items():
        (tmp_path / name).write_bytes(content)
        proc = cli("compare", str(good), str(tmp_path / name))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and message in out.replace("\n", " ") and "Traceback" not in out, (name, out)



def _two(p50_a: float, p50_b: float, seed: int, sha_a: str, sha_b: str) -> dict:
    a, b = _report(p50_a, 0.02, seed), _report(p50_b, 0.02, seed + 10)
    a["artifacts"][0].update(name="teacher.onnx", sha256=sha_a)
    b["artifacts"][0].update(name="student.onnx", sha256=sha_b)
    return {"artifacts": a["artifacts"] + b["artifacts"]}


def test_unchanged_bytes_measure_the_between_run_drift() -> None:
    """A busy machine: the teacher's ONNX is byte-identical in both runs yet 6% slower. It is not a regression,
    and it raises the floor: the student, changed and 4% slower, is within that drift."""
    old = _two(5.0, 2.0, 0, "aaa", "bbb")
    new = _two(5.3, 2.08, 1, "aaa", "ccc")
    rows = {r["artifact"]: r for r in compare(old, new)}
    assert rows["teacher.onnx"]["verdict"] == "same bytes"
    assert rows["student.onnx"]["verdict"] == "within noise" and rows["student.onnx"]["floor"] > 0.05
    worse = _two(5.3, 2.4, 1, "aaa", "ccc")  # the student 20% slower: beyond the drift
    assert {r["artifact"]: r for r in compare(old, worse)}["student.onnx"]["verdict"] == "regression"


def test_cli_same_bytes_pass_and_nothing_comparable_fails(tmp_path: Path) -> None:
    old, new, other = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "other.json"
    old.write_text(json.dumps(_two(5.0, 2.0, 0, "aaa", "bbb")))
    new.write_text(json.dumps(_two(5.3, 2.0, 1, "aaa", "bbb")))
    assert cli("compare", str(old), str(new)).returncode == 0
    unrelated = _report(5.0, 0.02, 0)
    unrelated["artifacts"][0]["name"] = "other.onnx"
    other.write_text(json.dumps(unrelated))
    proc = cli("compare", str(old), str(other))
    assert proc.returncode == 2 and "nothing to compare" in proc.stderr
