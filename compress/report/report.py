"""report.json and report.md: one row per artifact, with the "compressed but not faster" check."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.artifacts import Artifact, Artifacts
from compress.fileio import atomic_write_json, atomic_write_text
from compress.report.budgets import (
    accuracy_on,
    driving_budget,
    reference_perplexity,
    speedup_reference,
    teacher_p50,
)

# A speed-up smaller than this is within run-to-run noise on shared machines: not "measurably faster".
MIN_SPEEDUP = 1.05


def fp32_export_name(model: str, kind: str) -> str:
    """The fp32 artifact `export` makes of ``model`` in this kind: `<model>.onnx` or `<model>.xnnpack.pte`."""
    return f"{model}.xnnpack.pte" if kind == "pte" else f"{model}.onnx"


def baseline_of(art: Artifact, artifacts: Artifacts, device: str) -> Artifact | None:
    """The artifact this one should beat on ``device``.

    An int8 ONNX file is compared with the fp32 ONNX it was quantized from (or, when its parent is the PyTorch
    model, with that model's fp32 export); the fp32 ONNX of a model is compared with the fp32 ONNX of the
    nearest ancestor model (a student with its teacher).
    """
    parent = artifacts.get(art.parent or "")
    if parent is None:
        return None
    if parent.kind == art.kind:
        return parent if device in parent.latency else None
    own = artifacts.get(fp32_export_name(parent.name, art.kind))
    if own is not None and own.name != art.name and device in own.latency:
        return own
    seen: set[str] = set()
    model = artifacts.get(parent.parent or "")
    while model is not None and model.name not in seen:
        seen.add(model.name)
        exported = artifacts.get(fp32_export_name(model.name, art.kind))
        if exported is not None and exported.name != art.name and device in exported.latency:
            return exported
        model = artifacts.get(model.parent or "")
    return None


def _flag_not_smaller(art: Artifact, artifacts: Artifacts, flags: list[dict[str, Any]]) -> None:
    """Quantized artifacts aim to be smaller than their source: flag one that is not (by 5% or more)."""
    source = artifacts.get(art.parent or "")
    if source is not None and source.kind == "model":  # quantized straight from the model: its fp32 export
        source = artifacts.get(fp32_export_name(source.name, art.kind))
    if not art.precision.startswith("int8") or source is None or source.kind != art.kind:
        return
    if art.size_bytes >= 0.95 * source.size_bytes:
        msg = (
            f"{art.name} is not smaller than {source.name} ({art.size_bytes / 1e6:.2f} MB vs "
            f"{source.size_bytes / 1e6:.2f} MB): no weights were stored in int8."
        )
        flags.append({"artifact": art.name, "device": None, "kind": "not_smaller", "message": msg})


def _searches(history: list[Artifact]) -> list[dict[str, Any]]:
    """What each search stage chose and its top candidates (the searched student is replaced by later stages)."""
    out = []
    for art in history:
        info = art.info.get("search")
        if info:
            keep = ("method", "chosen", "top", "evaluated", "rejected", "seconds", "latency_table_mape", "budget",
                    "rerank")  # fmt: skip
            out.append({"artifact": art.name} | {k: info.get(k) for k in keep})
    return out


def _pruned(history: list[Artifact]) -> list[dict[str, Any]]:
    """What each prune stage kept: fraction of the target's measure and, for encoders, heads and FFN per layer."""
    out = []
    for art in history:
        info = art.info.get("pruning")
        if info:
            target = {k: v for k, v in (info.get("target") or {}).items() if v is not None and k != "sequence"}
            keep = ("method", "kept_fraction", "params_before", "structure", "latency_model", "latency_checks")
            out.append({"artifact": art.name, "params": art.params, "target": target} | {k: info.get(k) for k in keep})
    return out


def _budget_spending(recipe: dict[str, Any], history: list[Artifact], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the recipe budget went, when search or prune stages were driven by a latency on its device (such as
    `budget: recipe`, `target: budget`): per
    stage that made the deployed model, its test accuracy against the teacher's and the latency it measured (or
    was driven to) on the budget's device, ending with the deployed artifacts' own measurement."""
    driving = driving_budget(recipe)
    if driving is None:
        return {}
    limits = [(s.get("budget") or {}) if s.get("stage") == "search" else (s.get("target") or {})
              for s in recipe.get("stages") or [] if s.get("stage") in ("search", "prune")]  # fmt: skip
    if not any(lim.get("device") == driving[0] and (lim.get("max_latency_ms") or lim.get("latency_ms")
                                                     or lim.get("speedup")) for lim in limits):  # fmt: skip
        return {}  # no stage was driven by a latency on the budget's device
    device, percentile, limit = driving
    speedup = None
    if percentile == "speedup":  # the limit in ms is the teacher's p50 of this run over the factor
        reference = speedup_reference(recipe, device)
        teacher_ms = teacher_p50(rows, reference)
        if teacher_ms is None:
            return {}
        speedup, percentile, limit = limit, "p50", teacher_ms / limit
    teacher = next((a for a in reversed(history) if a.name == "teacher" and a.kind == "model"), None)
    t_acc = teacher.metrics.get("accuracy") if teacher else None
    if t_acc is None:  # a loaded teacher is not evaluated in PyTorch: its fp32 graph's test accuracy stands for it
        t_acc = next((r["metrics"].get("accuracy") for r in rows if r["name"] == "teacher.onnx"), None)
    steps: list[dict[str, Any]] = []
    for art in history:
        if art.kind != "model" or art.name == "teacher" and art.stage != "finetune":
            continue
        info = art.info
        step: dict[str, Any] = {"stage": art.stage, "artifact": art.name, "params": art.params,
                                "accuracy": art.metrics.get("accuracy")}  # fmt: skip
        if "search" in info:
            chosen = info["search"]["chosen"]
            step["latency_ms"], step["how"] = chosen.get("measured_ms"), "search: median of the measured rounds"
        if "pruning" in info:
            p = info["pruning"]
            if p.get("already_met_ms") is not None:
                step["latency_ms"], step["how"] = p["already_met_ms"], "prune: measured, already within"
            elif (p.get("latency_model") or {}).get("limit_ms") is not None:
                step["latency_ms"], step["how"] = p["latency_model"]["limit_ms"], "prune: the target it was driven to"
            elif (p.get("target") or {}).get("latency_ms") is not None:
                step["latency_ms"], step["how"] = p["target"]["latency_ms"], "prune: the target it was driven to"
        steps.append(step)
    patterns = ((recipe.get("budgets") or {}).get(device) or {}).get("artifacts")
    for row in rows:  # the artifacts the budget holds (default: every measured ONNX file but the teacher's)
        stats = row["latency"].get(device)
        held = any(fnmatch.fnmatchcase(row["name"], p) for p in patterns) if patterns else (
            row["format"] == "onnx" and not row["name"].startswith("teacher"))  # fmt: skip
        if stats and held:
            steps.append({"stage": "deployed", "artifact": row["name"], "params": row["params"],
                          "accuracy": row["metrics"].get("accuracy"), "latency_ms": stats.get(f"{percentile}_ms"),
                          "how": f"profile: {percentile}"})  # fmt: skip
    for step in steps:
        acc = step.get("accuracy")
        step["points_vs_teacher"] = 100 * (acc - t_acc) if acc is not None and t_acc is not None else None
        lat = step.get("latency_ms")
        step["of_budget"] = lat / limit if lat else None
    return {"device": device, "percentile": percentile, "limit_ms": limit, "speedup": speedup, "steps": steps}


def _spending_markdown(b: dict[str, Any]) -> list[str]:
    over = f": {b['speedup']:g}x the teacher in this run" if b.get("speedup") else ""
    lines = [f"## Budget: where it went ({b['device']}, {b['percentile']} <= {b['limit_ms']:.4g} ms{over})", "",
             "| stage | artifact | params | test accuracy | points vs teacher | latency ms | of budget | measured by |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for s in b["steps"]:
        acc = f"{100 * s['accuracy']:.2f}%" if s.get("accuracy") is not None else "-"
        pts = f"{s['points_vs_teacher']:+.2f}" if s.get("points_vs_teacher") is not None else "-"
        lat = f"{s['latency_ms']:.3f}" if s.get("latency_ms") else "-"
        share = f"{100 * s['of_budget']:.0f}%" if s.get("of_budget") else "-"
        lines.append(f"| {s['stage']} | {s['artifact']} | {_fmt(s['params'] / 1e6 if s['params'] else None, '.2f')}M "
                     f"| {acc} | {pts} | {lat} | {share} | {s.get('how', '-')} |")  # fmt: skip
    return [*lines, ""]


def _moefied(history: list[Artifact]) -> list[dict[str, Any]]:
    """Each moefy stage's policy and activated FFN parameters per layer."""
    out = []
    for art in history:
        moe = art.info.get("moe")
        if moe:
            act = moe["activated"]
            layers = [{"layer": lay["layer"], "policy": lay["policy"], "experts": lay["active_experts_per_token"],
                       "active_params": a["active_params"], "dense_params": a["dense_params"]}
                      for lay, a in zip(moe["layers"], act["per_layer"], strict=True)]  # fmt: skip
            out.append({"artifact": art.name, "experts": moe["experts"], "active_fraction": act["active_fraction"],
                        "calibration_seconds": moe["calibration_seconds"], "layers": layers,
                        "accuracy": art.metrics.get("accuracy")})  # fmt: skip
    return out


def _moefied_markdown(m: dict[str, Any]) -> list[str]:
    lines = [
        f"## MoEfication: `{m['artifact']}`",
        "",
        f"{m['experts']} experts per FFN; {100 * m['active_fraction']:.1f}% of the FFN parameters active per token; "
        f"calibration {m['calibration_seconds']:.0f} s.",
        "",
        "| layer | policy | experts per token | active FFN params | dense FFN params |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {lay['layer']} | {lay['policy']} | {lay['experts']:.2f} | {lay['active_params']:,} | "
              f"{lay['dense_params']:,} |" for lay in m["layers"]]  # fmt: skip
    return lines + [""]


def _quantized(artifacts: Artifacts) -> list[dict[str, Any]]:
    """How each quantization-aware artifact was made and what onnxruntime really executes."""
    out = []
    for art in artifacts.values():
        if art.info.get("method") == "qat":
            keep = ("scheme", "teacher", "integer_kernels", "float_layers")
            out.append({"artifact": art.name, "losses": [c["name"] for c in art.info.get("losses", [])]}
                       | {k: art.info.get(k) for k in keep}
                       | {k: v for k, v in art.metrics.items() if k.startswith(("parity", "top1"))})  # fmt: skip
    return out


def build_report(
    artifacts: Artifacts, recipe: dict[str, Any], out_dir: Path, history: list[Artifact] | None = None
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    devices = sorted({d for a in artifacts.values() for d in a.latency})
    for art in artifacts.values():
        row: dict[str, Any] = {
            "name": art.name,
            "path": art.to_json(out_dir)["path"],
            "format": art.format,
            "precision": art.precision,
            "parent": art.parent,
            "params": art.params,
            "size_bytes": art.size_bytes,
            "sha256": art.sha256,
            "metrics": art.metrics,
            "latency": {},
            "not_runnable": art.info.get("not_runnable", {}),  # device -> why its runtime cannot run this file
            "accuracy_on": art.info.get("accuracy_on", {}),  # device -> test accuracy on its runtime (profile)
        }
        for device in devices:
            if device not in art.latency:
                continue
            stats = dict(art.latency[device])
            base = baseline_of(art, artifacts, device)
            if base is not None:
                speedup = base.latency[device]["p50_ms"] / stats["p50_ms"]
                stats["baseline"] = base.name
                stats["speedup_vs_baseline"] = speedup
                smaller = art.size_bytes < 0.95 * base.size_bytes
                if speedup < MIN_SPEEDUP:
                    msg = (
                        f"{art.name} is not measurably faster than {base.name} on {device} "
                        f"(p50 {stats['p50_ms']:.3f} ms vs {base.latency[device]['p50_ms']:.3f} ms, "
                        f"{speedup:.2f}x){' although it is smaller' if smaller else ''}."
                    )
                    flags.append({"artifact": art.name, "device": device, "kind": "not_faster", "message": msg})
            row["latency"][device] = stats
        _flag_not_smaller(art, artifacts, flags)
        rows.append(row)
    for art in artifacts.values():
        for device, why in (art.info.get("profile_failed") or {}).items():
            msg = f"{art.name} was not measured on {device}: {why}"
            flags.append({"artifact": art.name, "device": device, "kind": "profile_failed", "message": msg})
    for art in history or []:
        missed = (art.info.get("pruning") or {}).get("target_missed")
        if missed:
            flags.append({"artifact": art.name, "device": None, "kind": "target_missed", "message": missed})
    return {
        "recipe": recipe,
        "devices": devices,
        "measurement": _measurement(artifacts, devices),
        "artifacts": rows,
        "flags": flags,
        "searches": _searches(history or []),
        "pruned": _pruned(history or []),
        "moefied": _moefied(history or []),
        "budget_spending": _budget_spending(recipe, history or [], rows),
        "quantized": _quantized(artifacts),
        "quantize_choices": [{"artifact": a.name, **a.info["quantize_budget"]} for a in artifacts.values()
                             if a.info.get("quantize_budget")],  # fmt: skip
        "completions": [{"artifact": a.name, **c} for a in artifacts.values() for c in a.info.get("completions", [])],
    }


MEASUREMENT_KEYS = ("runtime", "runtime_version", "provider", "precision", "runner", "threads", "cpus", "cpu",
                    "machine")  # fmt: skip


def _measurement(artifacts: Artifacts, devices: list[str]) -> dict[str, dict[str, Any]]:
    """Per device: which runtime, version, provider, threads and CPU produced its numbers."""
    out: dict[str, dict[str, Any]] = {}
    for device in devices:
        stats = next(a.latency[device] for a in artifacts.values() if device in a.latency)
        out[device] = {k: stats[k] for k in MEASUREMENT_KEYS if stats.get(k) is not None}
    return out


def _measurement_markdown(report: dict[str, Any]) -> list[str]:
    lines = ["## Measurement", ""]
    for device, m in (report.get("measurement") or {}).items():
        cpu = m.get("cpu") or {}
        where = f"{m.get('runtime', '?')} {m.get('runtime_version', '')}, {m.get('provider', '-')}"
        extra = f", {m['precision']} inference" if m.get("precision") else ""
        threads = f"{m.get('threads') or 'default'} threads" + (f" pinned to CPUs {m['cpus']}" if m.get("cpus") else "")
        flags = f" ({', '.join(cpu['flags'])})" if cpu.get("flags") else ""
        lines.append(f"- **{device}**: {where}{extra}; {threads}; runner {m.get('runner', 'local')}; "
                     f"{cpu.get('model', m.get('machine', '?'))}{flags}")  # fmt: skip
    tops = [(row["name"], d, st["top_ops"]) for row in report["artifacts"] for d, st in row["latency"].items()
            if st.get("top_ops")]  # fmt: skip
    if tops:
        lines += ["", "Where the time goes (the runtime's own profiler, share of operator time):", ""]
        for name, device, ops in tops:
            lines.append(f"- {name} on {device}: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops))
    return lines + [""]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


TRADE_OFF_PPL_PCT = 10.0  # causal LMs: the fastest artifact within this much perplexity increase of the teacher
TRADE_OFF_POINTS = 1.0  # with no budget met: the fastest artifact within this many accuracy points of the teacher


def headline(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per device, the artifact to ship: the fastest that meets every budget of that device; when it has no
    budget, or no artifact meets them all, the best trade-off (the fastest within 1 accuracy point of the
    teacher, else the most accurate). With its speed-up over the teacher's fp32 artifact on that device, its
    accuracy change in points (on the device's runtime where the profile stage scored it), and the budget
    verdict."""
    rows = report["artifacts"]
    checks = report.get("budgets") or []
    out = []
    for device in report["devices"]:
        # every measured artifact, the teacher's included (a recipe may only quantize or moefy the teacher), less
        # those the report itself calls neither faster nor smaller than their source: never worth shipping
        measured = [r for r in rows if r["latency"].get(device) and not _no_gain(r, rows, device)]
        if not measured:
            continue
        teacher = next((r for r in rows if r["name"].startswith("teacher") and r["latency"].get(device)
                        and r["precision"] == "fp32"), None)  # fmt: skip
        ref_acc = accuracy_on(teacher, device) if teacher else None
        if ref_acc is None:
            ref_acc = next((r["metrics"].get("accuracy") for r in rows if r["name"] == "teacher"), None)
        ref_ppl = reference_perplexity(rows)
        mine = [c for c in checks if c["device"] == device]
        failing = {c["artifact"] for c in mine if not c["passed"]}
        budgeted = {c["artifact"] for c in mine}
        meets = [r for r in measured if r["name"] in budgeted and r["name"] not in failing]
        pool = meets
        if meets:
            pick, why = min(meets, key=lambda r: r["latency"][device]["p50_ms"]), "fastest that meets every budget"
        elif ref_ppl is not None:  # causal LMs: perplexity, relative
            def ppl(r: dict[str, Any]) -> float:
                return float(r["metrics"].get("perplexity") or math.inf)

            close = pool = [r for r in measured if 100 * (ppl(r) / ref_ppl - 1) <= TRADE_OFF_PPL_PCT]
            if close:
                pick = min(close, key=lambda r: r["latency"][device]["p50_ms"])
                why = f"fastest within {TRADE_OFF_PPL_PCT:g}% of the teacher's perplexity"
            else:
                pick = min(measured, key=ppl)
                why = f"lowest perplexity (none within {TRADE_OFF_PPL_PCT:g}% of the teacher's)"
        else:
            def acc(r: dict[str, Any], device: str = device) -> float:
                return float(accuracy_on(r, device) or 0.0)

            close = pool = [r for r in measured if ref_acc is None or 100 * (ref_acc - acc(r)) <= TRADE_OFF_POINTS]
            if close:
                pick = min(close, key=lambda r: r["latency"][device]["p50_ms"])
                why = f"fastest within {TRADE_OFF_POINTS:g} point of the teacher"
            else:
                pick, why = max(measured, key=acc), "most accurate (none within 1 point of the teacher)"
        pick, why = _simplest(pick, why, pool, rows, device)
        p50 = pick["latency"][device]["p50_ms"]
        speedup = teacher["latency"][device]["p50_ms"] / p50 if teacher else None
        a = accuracy_on(pick, device)
        verdict = ("no budget" if not mine else "meets every budget" if meets
                   else f"misses {len([c for c in mine if not c['passed']])} budget check(s)")  # fmt: skip
        ppl_now = pick["metrics"].get("perplexity")
        lat = pick["latency"][device]
        out.append({
            "device": device, "artifact": pick["name"], "why": why, "p50_ms": p50, "speedup_vs_teacher": speedup,
            "perplexity": ppl_now, "perplexity_increase_pct": None if ppl_now is None or ref_ppl is None
            else 100 * (ppl_now / ref_ppl - 1), "tokens_per_s": lat.get("tokens_per_s"),
            "ttft_p50_ms": lat.get("ttft_p50_ms"),
            "teacher_artifact": teacher["name"] if teacher else None,
            "accuracy": a, "accuracy_change_points": None if a is None or ref_acc is None else 100 * (a - ref_acc),
            "budgets": verdict,
        })  # fmt: skip
    return out


def _no_gain(row: dict[str, Any], rows: list[dict[str, Any]], device: str) -> bool:
    """Whether the report calls ``row`` not measurably faster than its source on ``device`` and not smaller."""
    stats = row["latency"][device]
    base = next((r for r in rows if r["name"] == stats.get("baseline")), None)
    if base is None:
        return False
    return stats.get("speedup_vs_baseline", 0.0) < MIN_SPEEDUP and row["size_bytes"] >= 0.95 * base["size_bytes"]


def _simplest(
    pick: dict[str, Any], why: str, pool: list[dict[str, Any]], rows: list[dict[str, Any]], device: str
) -> tuple[dict[str, Any], str]:
    """The simpler file when the pick is within the report's own noise band (`MIN_SPEEDUP`) of the one it was made
    from and that one qualifies too: an int8 file 1.02x its fp32 source ships as the fp32 file."""
    seen = {pick["name"]}
    while True:
        stats = pick["latency"][device]
        base = next((r for r in pool if r["name"] == stats.get("baseline")), None)
        if base is None or base["name"] in seen or stats.get("speedup_vs_baseline", 0.0) >= MIN_SPEEDUP:
            return pick, why
        why = (f"{why}; `{pick['name']}` is {stats['speedup_vs_baseline']:.2f}x it, within the {MIN_SPEEDUP:g}x "
               "noise band, so the simpler file ships")  # fmt: skip
        pick = base
        seen.add(pick["name"])


def describe_headline(item: dict[str, Any]) -> str:
    speed = (f", {item['speedup_vs_teacher']:.2f}x vs {item['teacher_artifact']}"
             if item["speedup_vs_teacher"] is not None else "")  # fmt: skip
    acc = (f", accuracy {100 * item['accuracy']:.2f}% ({item['accuracy_change_points']:+.2f} points)"
           if item["accuracy_change_points"] is not None else "")  # fmt: skip
    if item.get("perplexity_increase_pct") is not None:
        acc = f", perplexity {item['perplexity']:.2f} ({item['perplexity_increase_pct']:+.1f}%)"
    if item.get("tokens_per_s") is not None:
        speed += f", {item['tokens_per_s']:.1f} tokens/s, time to first token {item['ttft_p50_ms']:.1f} ms"
    return (f"**{item['device']}**: ship `{item['artifact']}` ({item['why']}): p50 {item['p50_ms']:.3f} ms{speed}"
            f"{acc}; budgets: {item['budgets']}")  # fmt: skip


def render_markdown(report: dict[str, Any]) -> str:
    name = report["recipe"].get("name", "recipe")
    lines = [f"# Compression report: {name}", ""]
    for item in report.get("headline") or []:
        lines.append(f"- {describe_headline(item)}")
    if report.get("headline"):
        lines.append("")
    devices = report["devices"]
    quality = quality_column(report["artifacts"])
    head = ["artifact", "format", "precision", "params", "size MB", quality[0]]
    generating = {d for d in devices for r in report["artifacts"] if "tokens_per_s" in r["latency"].get(d, {})}
    for d in devices:
        head += [f"{d} p50 ms", f"{d} p90 ms", f"{d} speed-up"]
        if d in generating:  # causal LMs: the latencies are per decoded token
            head += [f"{d} tokens/s", f"{d} TTFT ms"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in report["artifacts"]:
        cells = [
            row["name"],
            row["format"],
            row["precision"],
            _fmt(row["params"] / 1e6 if row["params"] else None, ".2f") + ("M" if row["params"] else ""),
            f"{row['size_bytes'] / 1e6:.2f}",
            quality[1](row),
        ]
        for d in devices:
            st = row["latency"].get(d, {})
            sp = st.get("speedup_vs_baseline")
            cells += [
                _fmt(st.get("p50_ms"), ".3f"),
                _fmt(st.get("p90_ms"), ".3f"),
                f"{sp:.2f}x vs {st['baseline']}" if sp is not None else "-",
            ]
            if d in generating:
                cells += [_fmt(st.get("tokens_per_s"), ".1f"), _fmt(st.get("ttft_p50_ms"), ".2f")]
        lines.append("| " + " | ".join(cells).replace("-%", "-") + " |")
    lines.append("")
    if report.get("pareto"):
        lines += [f"![accuracy against latency]({report['pareto']})", ""]
    if report.get("measurement"):
        lines += _measurement_markdown(report)
    if report["flags"]:
        lines += ["## Flags", ""] + [f"- **{f['kind']}**: {f['message']}" for f in report["flags"]] + [""]
    else:
        lines += ["No flags: every measured artifact is faster than the one it came from.", ""]
    for search in report.get("searches", []):
        lines += _search_markdown(search)
    for p in report.get("pruned", []):
        lines += _pruned_markdown(p)
    for q in report.get("quantized", []):
        lines += _quantized_markdown(q)
    for c in report.get("quantize_choices", []):
        lines += _choice_markdown(c)
    for m in report.get("moefied", []):
        lines += _moefied_markdown(m)
    if report.get("completions"):
        lines += _completions_markdown(report["completions"])
    if report.get("budget_spending"):
        lines += _spending_markdown(report["budget_spending"])
    if report.get("budgets"):
        from compress.report.budgets import describe

        lines += ["## Budgets", ""] + [f"- {describe(c)}" for c in report["budgets"]] + [""]
    lines.append("Accuracy is measured on the test split, on each artifact's own runtime (PyTorch or onnxruntime).")
    return "\n".join(lines) + "\n"


def _completions_markdown(items: list[dict[str, Any]]) -> list[str]:
    """What each deployed causal LM writes after the fixed prompts (greedy, on onnxruntime)."""
    lines = ["## Greedy completions", "",
             "Each deployed graph continues the fixed prompts (greedy decoding through its KV cache, on onnxruntime):",
             ""]  # fmt: skip
    for artifact in dict.fromkeys(item["artifact"] for item in items):
        lines += [f"- {artifact}:", ""]
        for item in (i for i in items if i["artifact"] == artifact):
            text = (item["prompt"] + item["completion"]).replace("```", "'''")  # cannot close the block early
            lines += ["  ```", *[f"  {line}" for line in text.splitlines() or [""]], "  ```", ""]
    return lines


def _pruned_markdown(p: dict[str, Any]) -> list[str]:
    target = ", ".join(f"{k} {v}" for k, v in p["target"].items())
    kept = p.get("kept_fraction")
    lines = [
        f"## Pruning: {p['method']} -> `{p['artifact']}`",
        "",
        f"- target {target}; kept {_fmt(100 * kept if kept is not None else None, '.1f')}%; parameters "
        f"{p.get('params_before') or 0:,} -> {p.get('params') or 0:,}",
        "",
    ]
    model = p.get("latency_model")
    if model:  # what the cost model expected: the profile's measurement of the deployed graph says if it held
        lines[-1:] = [
            f"- latency cost model: unpruned {model['full_ms']:.3f} ms measured, {model['fixed_ms']:.3f} ms of it "
            f"fixed; pruned model predicted at {model['predicted_ms']:.3f} ms"
            + (f", measured at {model['measured_ms']:.3f} ms" if model.get("measured_ms") is not None else ""),
            "",
        ]
        checks = p.get("latency_checks") or []
        if len(checks) > 1:  # the closed loop corrected the target: every check, the kept one marked
            lines[-1:] = ["- latency checks (kept fraction: measured ms): " + ", ".join(
                f"{c['kept']:.3f}: {c['measured_ms']:.3f}" + (" (kept)" if c.get("kept_model") else "")
                for c in checks), ""]  # fmt: skip
    structure = p.get("structure") or {}
    if "heads" in structure:  # encoder: heads and FFN units per layer
        lines += ["| layer | heads | FFN units |", "| --- | --- | --- |"]
        for i, (h, f) in enumerate(zip(structure["heads"], structure["ffn"], strict=True)):
            lines.append(f"| {i} | {h or 'removed'} | {f or 'removed'} |")
        lines.append("")
    elif structure:  # CNN: channels kept per masked group
        lines += ["| channel group | channels kept |", "| --- | --- |"]
        lines += [f"| {name} | {kept} |" for name, kept in structure.items()] + [""]
    return lines


def _quantized_markdown(q: dict[str, Any]) -> list[str]:
    scheme = q.get("scheme") or {}
    activations = scheme.get("activations")
    bits = f"W{scheme.get('weights', {}).get('bits', '?')}" + (
        f"A{activations.get('bits', '?')}" if activations else " (weight-only, float activations)"
    )
    kernels = ", ".join(f"{k} x{v}" for k, v in (q.get("integer_kernels") or {}).items()) or "none"
    floats = q.get("float_layers") or []
    return [
        f"## Quantization-aware training: `{q['artifact']}`",
        "",
        f"- {bits}, distilled from `{q.get('teacher')}` with {', '.join(q['losses'])}",
        f"- integer kernels onnxruntime executes: {kernels}",
        f"- layers left in float: {', '.join(floats) if floats else 'none'}",
        f"- fake-quantized PyTorch vs ONNX: max |logit diff| {_fmt(q.get('parity_max_abs_diff'), '.2e')}, top-1 "
        f"agreement {_fmt(q.get('parity_top1_agreement'), '.3f')}; agreement with fp32 "
        f"{_fmt(q.get('top1_agreement_with_fp32'), '.3f')}",
        "",
    ]


def _choice_markdown(c: dict[str, Any]) -> list[str]:
    verdict = "kept" if c["met"] else "none was within the budget: kept the most accurate,"
    lines = [f"## Quantization chosen by the accuracy budget: `{c['artifact']}`", "",
             f"Teacher dev accuracy {100 * c['teacher_dev_accuracy']:.2f}%, at most {c['accuracy_drop']:g} points "
             f"below it; {verdict} `{c['chosen']}`.", "",
             "| method | artifact | dev accuracy | points vs teacher | within |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for t in c["tried"]:
        lines.append(f"| {t['method']} | {t['artifact']} | {100 * t['dev_accuracy']:.2f}% | "
                     f"{t['points_vs_teacher']:+.2f} | {'yes' if t['meets'] else 'no'} |")  # fmt: skip
    return [*lines, ""]


def _search_markdown(s: dict[str, Any]) -> list[str]:
    mape = s.get("latency_table_mape")
    lines = [
        f"## Search: {s['method']} -> `{s['artifact']}`",
        "",
        f"{s['evaluated']} candidates scored ({s['rejected']} rejected by the budget) in {s['seconds']:.1f} s; "
        f"chose **{s['chosen']['describe']}** (rank {s['chosen']['rank']})."
        + (f" Latency table error on the top candidates: {100 * mape:.1f}%." if mape is not None else ""),
        "",
    ]
    rerank = s.get("rerank")
    if rerank:
        lines[-1:] = [f"Chosen by a distillation of {rerank['steps']} steps ({' + '.join(rerank['losses'])}) of each "
                      "of the best candidates within the budget, on the dev split (`rerank`).", ""]  # fmt: skip
    head = "| rank | candidate | score | params | MFLOPs | predicted ms | measured ms (median) | slowest round ms |"
    lines += [head + (" rerank dev |" if rerank else ""), "| --- " * (9 if rerank else 8) + "|"]
    for r in s["top"]:
        dev = (" " + _fmt(rerank["dev"].get(r["describe"]), ".4f") + " |") if rerank else ""
        lines.append(
            f"| {r['rank']} | {r['describe']} | {r['score']:.4f} | {r['params']:,} | {r['mflops']:.1f} | "
            f"{_fmt(r['predicted_ms'], '.3f')} | {_fmt(r['measured_ms'], '.3f')} | "
            f"{_fmt(r.get('measured_max_ms'), '.3f')} |{dev}"
        )
    return [*lines, ""]


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from compress.report.pareto import plot_pareto

    if "headline" not in report:
        report["headline"] = headline(report)
    if plot_pareto(report, out_dir / "pareto.png"):
        report["pareto"] = "pareto.png"
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    return report


def quality_column(rows: list[dict[str, Any]]) -> tuple[str, Callable[[dict[str, Any]], str]]:
    """The test-quality column of a report table: accuracy, or perplexity when the artifacts are causal LMs."""
    if any("perplexity" in r["metrics"] for r in rows):
        def ppl(row: dict[str, Any]) -> str:
            value = row["metrics"].get("perplexity")
            return f"{value:.2f}" if value is not None else "-"

        return "test ppl", ppl

    def acc(row: dict[str, Any]) -> str:
        value = row["metrics"].get("accuracy")
        return f"{100 * value:.2f}%" if value is not None else "-"

    return "test acc", acc
