"""Budgets per device (`budgets:` in the recipe): evaluated on the report, written as JUnit XML and a GitHub
job summary, and turned into a non-zero exit when one is missed."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from pydantic import Field, model_validator

from compress.config import Strict
from compress.fileio import atomic_write_text


class Budget(Strict):
    """Limits one device's artifacts must meet; a run that misses one exits with code 3."""

    p50_ms: float | None = Field(None, gt=0, description="Largest allowed median latency (ms).")
    p90_ms: float | None = Field(None, gt=0, description="Largest allowed 90th-percentile latency (ms).")
    speedup: float | None = Field(
        None,
        gt=0,
        description="Smallest allowed speed-up over the teacher: the p50 of the teacher's fp32 ONNX (`teacher.onnx`, "
        "so an export stage must export the teacher) on `reference`, divided by the artifact's p50 here, both from "
        "the same profile stage, timed in turns over its `rounds` (5 unless the stage sets them) and each taken at its "
        "fastest round. On a shared machine whose speed drifts, two graphs timed together move far less than "
        "either time, and slow phases slow a large teacher more than a small student; `prune.target: budget` prunes "
        "to it the same way (the teacher timed in every round of its cost measurement).",
    )
    reference: str | None = Field(
        None, description="Device profile the teacher's p50 for `speedup` is measured on (default: this device)."
    )
    size_mb: float | None = Field(None, gt=0, description="Largest allowed artifact size (MB, 10^6 bytes).")
    accuracy_drop: float | None = Field(
        None,
        ge=0,
        description="Largest allowed test-accuracy loss in points against the teacher's fp32 ONNX "
        "(or the teacher model when it was not exported). The artifact's accuracy is the one on this device's "
        "runtime where the profile stage measures it (local OpenVINO devices: its int8 kernels round differently), "
        "else the export stage's, on onnxruntime.",
    )
    tokens_per_s: float | None = Field(
        None, gt=0, description="Causal LMs: smallest allowed decode speed (tokens per second at the p50 per-token "
        "latency, `profile.generation`).",
    )  # fmt: skip
    ttft_ms: float | None = Field(
        None, gt=0, description="Causal LMs: largest allowed median time to first token (prefill of the prompt, ms)."
    )
    perplexity_increase: float | None = Field(
        None,
        ge=0,
        description="Causal LMs: largest allowed test-perplexity increase in percent against the teacher's fp32 "
        "ONNX (or the teacher model when it was not exported).",
    )
    artifacts: list[str] | None = Field(
        None,
        min_length=1,
        description="Artifact names or glob patterns held to this budget (default: every ONNX artifact "
        "that is not the teacher's). A name or pattern that matches no artifact fails the budget: a typo must "
        "not turn the gate off.",
    )

    @model_validator(mode="after")
    def _reference_needs_speedup(self) -> Budget:
        if self.reference is not None and self.speedup is None:
            raise ValueError("`reference` is the device a `speedup` is measured against; give `speedup` with it")
        return self


def _budget_limit(recipe: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, str, float] | None:
    """(device, key, value) of the first of ``keys`` set in the recipe's budget: `deploy.device`'s, else the
    first device's that has one. Reads a raw or a dumped recipe mapping (before or after validation)."""
    budgets: dict[str, Any] = recipe["budgets"] if isinstance(recipe.get("budgets"), dict) else {}
    deploy: dict[str, Any] = recipe["deploy"] if isinstance(recipe.get("deploy"), dict) else {}
    for name in [deploy["device"]] if isinstance(deploy.get("device"), str) else list(budgets):
        limits = budgets.get(name)
        for key in keys:
            value = limits.get(key) if isinstance(limits, dict) else None
            # a latency limit must be positive; an accuracy drop may be zero
            if isinstance(value, int | float) and not isinstance(value, bool) and (value > 0 or key == "accuracy_drop"
                                                                                   and value == 0):  # fmt: skip
                return name, key, float(value)
    return None


def driving_budget(recipe: dict[str, Any]) -> tuple[str, str, float] | None:
    """(device, percentile, limit) of the budget that drives `budget: recipe` / `target: budget` stages: a limit
    in ms (percentile `p50` or `p90`), or a speed-up over the teacher (percentile `speedup`, limit the factor)."""
    found = _budget_limit(recipe, ("p90_ms", "p50_ms", "speedup"))
    return (found[0], found[1].removesuffix("_ms"), found[2]) if found else None


def speedup_reference(recipe: dict[str, Any], device: str) -> str:
    """The device whose teacher p50 a `speedup` budget on ``device`` divides (its `reference`, else itself)."""
    limits = ((recipe.get("budgets") or {}).get(device)) or {}
    ref = limits.get("reference") if isinstance(limits, dict) else None
    return ref if isinstance(ref, str) else device


def teacher_p50(rows: list[dict[str, Any]], device: str) -> float | None:
    """The teacher's fp32 ONNX p50 on ``device`` in this run (what a `speedup` divides), if it was profiled there."""
    row = next((r for r in rows if r["name"] == "teacher.onnx"), None)
    value = ((row or {}).get("latency") or {}).get(device, {}).get("p50_ms")
    return float(value) if value else None


def budget_accuracy(recipe: dict[str, Any]) -> float | None:
    """The recipe budget's accuracy_drop (what `quantize: {method: budget}` spends)."""
    found = _budget_limit(recipe, ("accuracy_drop",))
    return found[2] if found else None


FORMAT_OF_KIND = {"onnx": "onnx", "pte": "executorch"}
AT_LEAST = {"tokens_per_s", "speedup"}  # limits that are minimums; every other is a maximum


def _selected(budget: Budget, rows: list[dict[str, Any]], fmt: str | None) -> list[dict[str, Any]]:
    """The artifacts ``budget`` holds on a device whose runtime runs ``fmt`` (None: any measured format)."""
    runnable = [r for r in rows if r["format"] in ("onnx", "executorch") and (fmt is None or r["format"] == fmt)]
    if budget.artifacts is None:
        return [r for r in runnable if not r["name"].startswith("teacher")]
    return [r for r in runnable if any(fnmatch.fnmatchcase(r["name"], p) for p in budget.artifacts)]


def accuracy_on(row: dict[str, Any], device: str) -> float | None:
    """A report row's test accuracy on ``device``'s runtime where the profile stage scored it (OpenVINO's int8
    kernels round differently from onnxruntime's), else the export stage's (onnxruntime)."""
    return (row.get("accuracy_on") or {}).get(device, row.get("metrics", {}).get("accuracy"))


def _teacher_accuracy(rows: list[dict[str, Any]]) -> float | None:
    by_name = {r["name"]: r for r in rows}
    for name in ("teacher.onnx", "teacher"):
        acc = by_name.get(name, {}).get("metrics", {}).get("accuracy")
        if acc is not None:
            return float(acc)
    return None


def reference_perplexity(rows: list[dict[str, Any]]) -> float | None:
    """The teacher's perplexity (its fp32 ONNX, else its PyTorch model): what causal-LM artifacts compare with."""
    by_name = {r["name"]: r for r in rows}
    for name in ("teacher.onnx", "teacher"):
        value = by_name.get(name, {}).get("metrics", {}).get("perplexity")
        if value is not None:
            return float(value)
    return None


def evaluate(
    report: dict[str, Any], budgets: dict[str, Budget], formats: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One check per artifact x device x limit: {artifact, device, limit, allowed, measured, status, passed}.

    A budget applies only to artifacts whose format the device's runtime runs (``formats``: device -> `onnx` or
    `executorch`): an ExecuTorch program is never held to an onnxruntime device's latency. A latency that was
    not measured (a run with `--only export`, a device whose measurement failed) has the status "not measured":
    reported, not a miss. A name or pattern in `artifacts` that matches none of the device's artifacts is a miss.
    """
    rows = report["artifacts"]
    teacher_acc = _teacher_accuracy(rows)
    teacher_ppl = reference_perplexity(rows)
    checks: list[dict[str, Any]] = []
    for device, budget in budgets.items():
        fmt = (formats or {}).get(device)
        names = [r["name"] for r in rows if r["format"] in ("onnx", "executorch") and fmt in (None, r["format"])]
        reference = budget.reference or device
        teacher_ms = teacher_p50(rows, reference)
        if budget.speedup is not None and teacher_ms is None:
            checks.append({"artifact": "teacher.onnx", "device": device, "limit": "speedup", "allowed": budget.speedup,
                           "measured": None, "status": "missed", "passed": False,
                           "message": f"budgets.{device}.speedup: the teacher's fp32 ONNX has no p50 on {reference} "
                                      "in this run; export it (`export.models: [..., teacher]`) and profile it on "
                                      f"{reference} (`profile.devices`)"})  # fmt: skip
        for pattern in budget.artifacts or []:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                checks.append({"artifact": pattern, "device": device, "limit": "artifacts", "allowed": pattern,
                               "measured": None, "status": "missed", "passed": False,
                               "message": f"budgets.{device}.artifacts: {pattern!r} matches no {fmt or 'profiled'} "
                                          f"artifact (have: {', '.join(names) or 'none'})"})  # fmt: skip
        for row in _selected(budget, rows, fmt):
            if device in (row.get("not_runnable") or {}):
                continue  # the device's runtime cannot read this file (e.g. onnxruntime-only operators)
            lat = row["latency"].get(device, {})
            acc = accuracy_on(row, device)
            ppl = row["metrics"].get("perplexity")
            measured: dict[str, float | None] = {
                "p50_ms": lat.get("p50_ms"),
                "p90_ms": lat.get("p90_ms"),
                "speedup": teacher_ms / lat["p50_ms"] if teacher_ms and lat.get("p50_ms") else None,
                "size_mb": row["size_bytes"] / 1e6,
                "accuracy_drop": None if acc is None or teacher_acc is None else 100 * (teacher_acc - acc),
                "tokens_per_s": lat.get("tokens_per_s"),
                "ttft_ms": lat.get("ttft_p50_ms"),
                "perplexity_increase": None if ppl is None or teacher_ppl is None else 100 * (ppl / teacher_ppl - 1),
            }
            for limit, value in measured.items():
                allowed = getattr(budget, limit)
                if allowed is None:
                    continue
                within = value is not None and (value >= allowed if limit in AT_LEAST else value <= allowed)
                status = "not measured" if value is None else "ok" if within else "missed"
                checks.append({"artifact": row["name"], "device": device, "limit": limit, "allowed": allowed,
                               "measured": value, "status": status, "passed": status != "missed"})  # fmt: skip
    return checks


def describe(check: dict[str, Any]) -> str:
    if "message" in check:
        return f"{check['message']} MISSED"
    value = check["measured"]
    got = "not measured" if value is None else f"{value:.3f}"
    verdict = {"ok": "ok", "missed": "MISSED", "not measured": "not checked"}[check.get("status", "ok")]
    bound = "at least" if check["limit"] in AT_LEAST else "allowed"
    return f"{check['artifact']} on {check['device']}: {check['limit']} {got} ({bound} {check['allowed']:g}) {verdict}"


def write_junit(checks: list[dict[str, Any]], path: Path, suite: str) -> None:
    failures = sum(not c["passed"] for c in checks)
    root = ET.Element("testsuites", name="compress", tests=str(len(checks)), failures=str(failures))
    skipped = sum(c.get("status") == "not measured" for c in checks)
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)), failures=str(failures), errors="0",
                       skipped=str(skipped))  # fmt: skip
    for c in checks:
        case = ET.SubElement(ts, "testcase", classname=f"{suite}.{c['device']}", name=f"{c['artifact']}:{c['limit']}")
        if not c["passed"]:
            ET.SubElement(case, "failure", message=describe(c), type="BudgetMissed")
        elif c.get("status") == "not measured":
            ET.SubElement(case, "skipped", message=describe(c))
    atomic_write_text(path, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def write_github_summary(checks: list[dict[str, Any]], suite: str) -> None:
    """Append a Markdown table to the GitHub job summary when running under GitHub Actions."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target or not checks:
        return
    lines = [
        f"### compress budgets: {suite}",
        "",
        "| artifact | device | limit | measured | allowed | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        got = "-" if c["measured"] is None else f"{c['measured']:.3f}"
        allowed = c["allowed"] if isinstance(c["allowed"], str) else f"{c['allowed']:g}"
        lines.append(
            f"| {c['artifact']} | {c['device']} | {c['limit']} | {got} | {allowed} | "
            f"{'**missed**' if not c['passed'] else 'not measured' if c.get('status') == 'not measured' else 'pass'} |"
        )
    with open(target, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n\n")
