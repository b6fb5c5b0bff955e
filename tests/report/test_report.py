from __future__ import annotations

from pathlib import Path

from compress.artifacts import Artifact
from compress.report.report import baseline_of, build_report, headline, render_markdown


def _art(name: str, kind: str, parent: str | None, p50: float | None, size: int = 100) -> Artifact:
    precision = "int8-" + name.split("int8-")[1].split(".")[0] if "int8-" in name else "fp32"
    art = Artifact(
        name,
        kind,
        Path(f"/x/{name}"),
        "test",
        parent=parent,
        precision=precision,  # type: ignore[arg-type]
        size_bytes=size,
        metrics={"accuracy": 0.9},
    )
    if p50 is not None:
        art.latency = {"cpu": {"p50_ms": p50, "p90_ms": p50 * 1.1}}
    return art


def _artifacts() -> dict[str, Artifact]:
    arts = [
        _art("teacher", "model", None, None),
        _art("student", "model", "teacher", None),
        _art("teacher.onnx", "onnx", "teacher", 10.0),
        _art("student.onnx", "onnx", "student", 5.0),
        _art("student.int8-dynamic.onnx", "onnx", "student.onnx", 2.5, size=25),
        _art("student.int8-static.onnx", "onnx", "student.onnx", 4.9, size=25),
    ]
    return {a.name: a for a in arts}


def test_baselines_follow_the_lineage() -> None:
    arts = _artifacts()
    assert baseline_of(arts["student.int8-dynamic.onnx"], arts, "cpu").name == "student.onnx"  # type: ignore[union-attr]
    assert baseline_of(arts["student.onnx"], arts, "cpu").name == "teacher.onnx"  # type: ignore[union-attr]
    assert baseline_of(arts["teacher.onnx"], arts, "cpu") is None


def test_compressed_but_not_faster_is_flagged() -> None:
    report = build_report(_artifacts(), {"name": "r"}, Path("/x"))
    flagged = {f["artifact"] for f in report["flags"] if f["kind"] == "not_faster"}
    assert flagged == {"student.int8-static.onnx"}  # 4.9 ms vs 5.0 ms: smaller, not faster
    assert "although it is smaller" in report["flags"][0]["message"]
    row = next(r for r in report["artifacts"] if r["name"] == "student.int8-dynamic.onnx")
    assert row["latency"]["cpu"]["speedup_vs_baseline"] == 2.0
    md = render_markdown(report)
    assert "| student.int8-dynamic.onnx |" in md and "not_faster" in md


def test_int8_that_is_not_smaller_is_flagged() -> None:
    arts = _artifacts()
    arts["student.int8-dynamic.onnx"].size_bytes = 99  # nothing was quantized
    report = build_report(arts, {"name": "r"}, Path("/x"))
    kinds = {(f["artifact"], f["kind"]) for f in report["flags"]}
    assert ("student.int8-dynamic.onnx", "not_smaller") in kinds
    assert ("student.int8-static.onnx", "not_smaller") not in kinds


def test_int8_made_from_the_model_is_compared_with_its_fp32_export() -> None:
    arts = _artifacts()
    qat = _art("student.int8-qat.onnx", "onnx", "student", 2.0, size=25)
    arts[qat.name] = qat
    assert baseline_of(qat, arts, "cpu").name == "student.onnx"  # type: ignore[union-attr]


def test_report_shows_the_structure_pruning_left() -> None:
    arts = _artifacts()
    pruned = _art("pruned", "model", "teacher", None)
    pruned.params = 600
    pruned.info["pruning"] = {
        "method": "dphubert", "target": {"params": 0.5, "flops": None, "sequence": 128}, "kept_fraction": 0.494,
        "params_before": 1000, "structure": {"heads": [4, 0], "ffn": [64, 12]},
    }  # fmt: skip
    cnn = _art("cnn", "model", "teacher", None)
    cnn.info["pruning"] = {"method": "dphubert", "target": {"params": 0.5}, "structure": {"stages.0.0.body": 6}}
    md = render_markdown(build_report(arts, {"name": "r"}, Path("/x"), [pruned, cnn]))
    assert "| stages.0.0.body | 6 |" in md
    assert "## Pruning: dphubert -> `pruned`" in md
    assert "target params 0.5; kept 49.4%; parameters 1,000 -> 600" in md
    assert "| 1 | removed | 12 |" in md
    assert "cost model" not in md  # a parameter target: no latency prediction to state
    pruned.info["pruning"] |= {"target": {"latency_ms": 2.0}, "latency_model": {
        "full_ms": 4.0, "fixed_ms": 0.5, "predicted_ms": 1.98, "per_head_ms": 0.02, "per_unit_ms": 0.0002,
        "per_layer_ms": 0.5}}  # fmt: skip
    md = render_markdown(build_report(arts, {"name": "r"}, Path("/x"), [pruned]))
    assert "latency cost model: unpruned 4.000 ms measured, 0.500 ms of it fixed; pruned model predicted at " \
           "1.980 ms" in md  # fmt: skip
    pruned.info["pruning"]["latency_model"]["measured_ms"] = 1.91  # the closed loop: checks, the kept one marked
    pruned.info["pruning"]["latency_checks"] = [{"kept": 0.4, "measured_ms": 1.62, "kept_model": False},
                                                {"kept": 0.48, "measured_ms": 1.91, "kept_model": True}]  # fmt: skip
    md = render_markdown(build_report(arts, {"name": "r"}, Path("/x"), [pruned]))
    assert "predicted at 1.980 ms, measured at 1.910 ms" in md
    assert "latency checks (kept fraction: measured ms): 0.400: 1.620, 0.480: 1.910 (kept)" in md


def test_the_headline_never_ships_a_file_its_own_flags_call_no_gain() -> None:
    arts = _artifacts()
    arts["student.int8-dynamic.onnx"].latency["cpu"]["p50_ms"] = 4.96  # the fastest, not measurably faster ...
    arts["student.int8-dynamic.onnx"].size_bytes = 99  # ... and not smaller: no int8 weights
    arts["student.int8-static.onnx"].latency["cpu"]["p50_ms"] = 5.2
    report = build_report(arts, {"name": "r"}, Path("/x"))
    [item] = headline(report)
    assert item["artifact"] == "student.onnx" and item["speedup_vs_teacher"] == 2.0


def test_the_headline_prefers_the_simpler_file_within_the_noise_band() -> None:
    arts = _artifacts()
    arts["student.int8-dynamic.onnx"].latency["cpu"]["p50_ms"] = 4.9  # 1.02x its fp32 source, though smaller
    report = build_report(arts, {"name": "r"}, Path("/x"))
    [item] = headline(report)
    assert item["artifact"] == "student.onnx" and "within the 1.05x noise band" in item["why"]
    arts["student.int8-dynamic.onnx"].latency["cpu"]["p50_ms"] = 2.5  # 2x: worth shipping
    assert headline(build_report(arts, {"name": "r"}, Path("/x")))[0]["artifact"] == "student.int8-dynamic.onnx"


def test_the_headline_ships_a_teacher_only_chain() -> None:
    arts = {a.name: a for a in [
        _art("teacher", "model", None, None), _art("teacher.onnx", "onnx", "teacher", 10.0),
        _art("teacher.int8-dynamic.onnx", "onnx", "teacher.onnx", 4.0, size=25),
    ]}  # fmt: skip
    [item] = headline(build_report(arts, {"name": "r"}, Path("/x")))
    assert item["artifact"] == "teacher.int8-dynamic.onnx" and item["speedup_vs_teacher"] == 2.5


def test_budget_spending_compares_with_the_teacher_graph_when_the_loaded_teacher_was_not_evaluated() -> None:
    from compress.report.report import _budget_spending

    recipe = {"budgets": {"cpu": {"p50_ms": 5.0}},
              "stages": [{"stage": "prune", "target": {"device": "cpu", "latency_ms": 4.0}}]}  # fmt: skip
    teacher = Artifact("teacher", "model", Path("/x/teacher"), "teacher")  # loaded, never evaluated: no accuracy
    student = Artifact("student", "model", Path("/x/student"), "prune", parent="teacher", params=10,
                       metrics={"accuracy": 0.88}, info={"pruning": {"target": {"latency_ms": 4.0}}})  # fmt: skip
    rows = [{"name": "teacher.onnx", "format": "onnx", "params": 20, "metrics": {"accuracy": 0.9},
             "latency": {"cpu": {"p50_ms": 10.0}}},
            {"name": "student.onnx", "format": "onnx", "params": 10, "metrics": {"accuracy": 0.87},
             "latency": {"cpu": {"p50_ms": 4.5}}}]  # fmt: skip
    steps = _budget_spending(recipe, [teacher, student], rows)["steps"]
    assert [round(s["points_vs_teacher"], 6) for s in steps] == [-2.0, -3.0]  # against the graph's 90%, not 0%
