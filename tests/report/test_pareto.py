"""The Pareto front: no point on it is beaten on both latency and accuracy."""

from __future__ import annotations

from pathlib import Path

from compress.report.pareto import frontier, plot_pareto


def test_frontier_keeps_only_unbeaten_points() -> None:
    pts = [(5.0, 88.6, "fp32"), (2.5, 88.5, "int8"), (2.9, 88.5, "qat"), (3.5, 87.8, "static"), (6.0, 89.9, "big")]
    assert [p[2] for p in frontier(pts)] == ["int8", "fp32", "big"]


def test_plot_is_written_only_with_something_to_plot(tmp_path: Path) -> None:
    row = {"name": "a", "metrics": {"accuracy": 0.9}, "latency": {"x86-cpu": {"p50_ms": 1.0}}}
    report = {"recipe": {"name": "r"}, "devices": ["x86-cpu"], "artifacts": [row]}
    assert plot_pareto(report, tmp_path / "p.png") == tmp_path / "p.png"
    assert (tmp_path / "p.png").stat().st_size > 1000
    report["artifacts"] = [{**row, "metrics": {}}]
    assert plot_pareto(report, tmp_path / "q.png") is None and not (tmp_path / "q.png").exists()
