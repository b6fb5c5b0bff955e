"""`compress compare OLD.json NEW.json`: latency regressions between two reports, judged against the noise
measured in those very runs rather than a fixed percentage.

For every artifact x device in both reports, the shift of the median latency gets a bootstrap confidence
interval from the raw timing samples of both runs (resampled independently). A shift whose whole interval
lies above zero, and whose size exceeds the between-run floor (see :func:`compare`), is a regression; the mirror
image is an improvement; anything else is within noise. Reports without raw samples fall back to the normal
approximation of the median's standard error (1.2533 * std / sqrt(runs))."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from compress.errors import ReportError

Z = {0.95: 1.960, 0.99: 2.576, 0.999: 3.291}
MIN_CHANGE = 0.02  # the smallest slow-down called a regression when no unchanged artifact measures the drift


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportError(f"{where}: {value!r} is not a number.")
    if positive and value <= 0:
        raise ReportError(f"{where}: {value!r}; a latency must be above 0.")
    return float(value)


def check_report(data: Any, path: str) -> dict[str, Any]:
    """A report.json as `compress run` writes it, or a :class:`ReportError` naming the file and the JSON path."""
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise ReportError(f"{path}: not a compress report.json (expected an object with an `artifacts` list).")
    for i, art in enumerate(data["artifacts"]):
        at = f"{path}: artifacts[{i}]"
        if not isinstance(art, dict) or not isinstance(art.get("name"), str):
            raise ReportError(f"{at}: expected an object with a `name`.")
        latency = art.get("latency") or {}
        if not isinstance(latency, dict):
            raise ReportError(f"{at}.latency: expected an object of devices.")
        for device, stats in latency.items():
            where = f"{at}.latency.{device}"
            if not isinstance(stats, dict):
                raise ReportError(f"{where}: expected an object with p50_ms.")
            if "p50_ms" not in stats:
                raise ReportError(f"{where}.p50_ms: missing (every measured latency has it).")
            _number(stats["p50_ms"], f"{where}.p50_ms", positive=True)
            for key in ("std_ms", "runs"):
                if key in stats:
                    _number(stats[key], f"{where}.{key}")
            samples = stats.get("samples_ms")
            if samples is not None:
                if not isinstance(samples, list):
                    raise ReportError(f"{where}.samples_ms: expected a list of milliseconds.")
                for j, v in enumerate(samples):
                    _number(v, f"{where}.samples_ms[{j}]", positive=True)
    return data


def _median_ci(old: list[float], new: list[float], confidence: float, resamples: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    a, b = np.asarray(old), np.asarray(new)
    ma = np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(mb - ma, [tail, 100 - tail])
    return float(lo), float(hi)


def _normal_ci(old: dict[str, Any], new: dict[str, Any], confidence: float) -> tuple[float, float]:
    def se(s: dict[str, Any]) -> float:
        return 1.2533 * float(s.get("std_ms", 0.0)) / math.sqrt(max(int(s.get("runs", 1)), 1))

    shift = float(new["p50_ms"]) - float(old["p50_ms"])
    half = Z.get(confidence, 2.576) * math.hypot(se(old), se(new))
    return shift - half, shift + half


def compare(
    old: dict[str, Any],
    new: dict[str, Any],
    *,
    confidence: float = 0.99,
    min_change: float = MIN_CHANGE,
    resamples: int = 2000,
) -> list[dict[str, Any]]:
    """One row per artifact x device measured in both reports.

    Two kinds of noise are accounted for. Within a run, the bootstrap interval of the median shift. Between
    runs (another machine state, another neighbour on a shared runner), which no interval from one run sees: an
    artifact whose bytes are the same in both reports (same sha256) measures it directly, since only the
    machine changed. Such rows get the verdict "same bytes" and never count as regressions; per device, the
    largest such change, or ``min_change`` when larger or when no artifact is unchanged, is the smallest
    relative slow-down that counts as a regression (``floor`` in each row)."""
    before = {a["name"]: a for a in old.get("artifacts", [])}
    pairs = []
    for art in new.get("artifacts", []):
        prev = before.get(art["name"])
        if prev is None:
            continue
        for device, stats in sorted((art.get("latency") or {}).items()):
            ref = (prev.get("latency") or {}).get(device)
            if ref:
                same = bool(art.get("sha256")) and art.get("sha256") == prev.get("sha256")
                pairs.append((art["name"], device, ref, stats, same))
    drift: dict[str, float] = {}
    for _, device, ref, stats, same in pairs:
        if same:
            change = abs(float(stats["p50_ms"]) / float(ref["p50_ms"]) - 1)
            drift[device] = max(drift.get(device, 0.0), change)
    rows = []
    for name, device, ref, stats, same in pairs:
        if ref.get("samples_ms") and stats.get("samples_ms"):
            lo, hi = _median_ci(ref["samples_ms"], stats["samples_ms"], confidence, resamples)
            method = "bootstrap"
        else:
            lo, hi = _normal_ci(ref, stats, confidence)
            method = "normal"
        change = float(stats["p50_ms"]) / float(ref["p50_ms"]) - 1
        floor = max(min_change, drift.get(device, 0.0))
        if same:
            verdict = "same bytes"
        elif lo > 0 and change > floor:
            verdict = "regression"
        elif hi < 0 and change < -floor:
            verdict = "improvement"
        else:
            verdict = "within noise"
        rows.append({
            "artifact": name, "device": device, "old_p50_ms": float(ref["p50_ms"]),
            "new_p50_ms": float(stats["p50_ms"]), "change": change, "ci_ms": [lo, hi], "noise_ms": (hi - lo) / 2,
            "floor": floor, "method": method, "verdict": verdict,
        })  # fmt: skip
    return rows


def render(rows: list[dict[str, Any]], confidence: float) -> str:
    lines = [
        f"| artifact | device | old p50 ms | new p50 ms | change | {int(confidence * 100)}% interval of the shift "
        "(ms) | between-run floor | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lo, hi = r["ci_ms"]
        verdict = f"**{r['verdict']}**" if r["verdict"] == "regression" else r["verdict"]
        lines.append(f"| {r['artifact']} | {r['device']} | {r['old_p50_ms']:.3f} | {r['new_p50_ms']:.3f} | "
                     f"{100 * r['change']:+.1f}% | [{lo:+.3f}, {hi:+.3f}] | {100 * r['floor']:.1f}% | "
                     f"{verdict} |")  # fmt: skip
    return "\n".join(lines)
