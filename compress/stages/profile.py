"""`profile`: latency of every ONNX artifact on each device profile, measured on the device's runtime."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from compress.artifacts import Artifact, Artifacts
from compress.config import Strict
from compress.context import Context
from compress.devices import DeviceProfile, resolve_device
from compress.errors import CompressError, StageError
from compress.evaluation import split_accuracy
from compress.runners import measure, preflight
from compress.runtimes.base import get_runtime, runtime_format
from compress.stages.base import Chain, StageConfig, register_stage
from compress.ui import progress

log = logging.getLogger("compress")


class Shape(Strict):
    """Input shape used for timing."""

    batch: int = Field(1, gt=0, description="Batch size (default: `deploy.batch`, else 1).")
    sequence: int = Field(
        128,
        gt=0,
        description="Sequence length (text models; ignored for images). Default: `deploy.sequence`, else 128.",
    )


class GenerationShape(Strict):
    """How a causal LM's KV-cache graph is timed: a prompt, then tokens decoded one at a time."""

    prompt: int = Field(128, gt=0, le=32768, description="Prompt tokens (their prefill is the time to first token).")
    new_tokens: int = Field(64, gt=0, le=4096, description="Tokens generated after the prompt, one per step.")


class ProfileConfig(StageConfig):
    """Measure latency of the ONNX artifacts on device profiles."""

    stage: Literal["profile"]
    devices: list[str] = Field(
        default_factory=lambda: ["x86-cpu"], min_length=1, description="Device profile names or YAML paths."
    )
    shape: Shape = Field(default_factory=Shape, description="Input shape.")  # type: ignore[arg-type]
    generation: GenerationShape = Field(
        default_factory=GenerationShape,  # type: ignore[arg-type]
        description="Causal LMs: time to first token for `prompt` tokens, then milliseconds per token and tokens "
        "per second (p50/p90) over `new_tokens` decoded through the KV cache; the latency columns are per token.",
    )
    runs: int = Field(100, gt=0, description="Timed runs per artifact and device.")
    seconds: float | None = Field(
        None, gt=0, description="Time budget per artifact and device instead of `runs` (at least 10 runs)."
    )
    warmup: int = Field(10, ge=0, description="Untimed warm-up runs.")
    rounds: int = Field(
        1, ge=1, le=50,
        description="Benchmark processes per device, taken in turns across the devices, each visiting the artifacts "
        "in a rotated order; an artifact's latency is then its fastest round (by p50), with every round's p50 in "
        "`rounds_p50_ms`. A speed-up is a ratio of two graphs' quiet speeds, and a shared machine's slow phases "
        "slow a large teacher far more than a small student, so a recipe whose `budgets` give a `speedup` gets 5 "
        "rounds unless it sets them (the teacher and the artifact are then compared at their fastest, as "
        "`prune.target.speedup` compares them).",
    )  # fmt: skip
    top_ops: int = Field(
        10, ge=0, description="Operators listed per artifact from the runtime's own profiler (0: none)."
    )
    artifacts: list[str] | None = Field(
        None,
        description="Artifacts to profile (default: every artifact each device's runtime runs: ONNX files, or "
        "ExecuTorch programs for `executorch` devices).",
    )

    def measured_devices(self) -> list[str]:
        return list(self.devices)

    def check(self, chain: Chain) -> list[str]:
        if not chain.supports("generation"):
            return []
        key, block, shape = chain.key, chain.data.max_length, self.generation
        if shape.prompt > block:
            return [f"{key}.generation.prompt: {shape.prompt} tokens is longer than the blocks the models learn from "
                    f"(data.max_length {block}); give at most {block}."]  # fmt: skip
        static_cache = any(getattr(s, "executorch", None) is not None for s in chain.before if s.stage == "export")
        if static_cache and shape.prompt + shape.new_tokens > block:
            return [f"{key}.generation: a prompt of {shape.prompt} and {shape.new_tokens} new tokens overflow the "
                    f"ExecuTorch programs' static cache of data.max_length {block} positions; give at most {block} "
                    "in all."]  # fmt: skip
        return []


def _targets(artifacts: Artifacts, config: ProfileConfig, device: DeviceProfile) -> tuple[list[str], dict[str, str]]:
    """The artifacts ``device``'s runtime runs, of those the stage measures, and why each other one is left out.

    By default every artifact of the runtime's format that the runtime can read (OpenVINO does not read
    onnxruntime's fused contrib operators, for one); an artifact named in `artifacts` that the runtime cannot run
    is an error before any measurement."""
    kind = runtime_format(device.runtime)
    runtime = get_runtime(device.runtime)
    names = config.artifacts or [n for n, a in artifacts.items() if a.kind == kind]
    chosen, skipped = [], {}
    for name in names:
        art = artifacts[name]
        why = (f"a {art.format} artifact; {device.runtime} runs {'ExecuTorch programs' if kind == 'pte' else 'ONNX'}"
               if art.kind != kind else runtime.unsupported(art.path))  # fmt: skip
        if why is None:
            chosen.append(name)
        elif config.artifacts:
            raise StageError(
                f"profile.artifacts: {device.name} ({device.runtime}) cannot run {name}: {why}. Remove it from "
                f"`artifacts` or measure it on a device whose runtime runs it."
            )
        else:
            skipped[name] = why
    return chosen, skipped


@register_stage("profile", ProfileConfig)
def run(artifacts: Artifacts, config: ProfileConfig, ctx: Context) -> Artifacts:  # type: ignore[override]
    missing = [n for n in config.artifacts or [] if n not in artifacts]
    if missing:
        raise StageError(f"profile.artifacts: no artifact {', '.join(missing)} (have: {', '.join(artifacts)}).")
    devices = [resolve_device(ref, ctx.base_dir) for ref in config.devices]
    plan: dict[str, list[str]] = {}
    skips: dict[str, dict[str, str]] = {}
    for device in devices:  # every device and artifact checked before the first measurement
        preflight(device)
        targets, skipped = _targets(artifacts, config, device)
        for name, why in skipped.items():
            log.info("profile: %s is not measured on %s: %s", name, device.name, why)
            if artifacts[name].kind == runtime_format(device.runtime):  # its format, but not readable there
                skips[name] = {**skips.get(name, {}), device.name: why}
        if not targets:
            kind = runtime_format(device.runtime)
            what = "ExecuTorch program (add `executorch:` to an export stage)" if kind == "pte" else "ONNX artifact"
            raise StageError(
                f"profile: device {device.name!r} ({device.runtime}) runs no {what} of this run; add an `export` "
                f"stage before `profile` (have: {', '.join(artifacts) or 'none'})."
            )
        plan[device.name] = targets
    out: Artifacts = {}
    for name, reasons in skips.items():
        art = artifacts[name]
        art.info = {**art.info, "not_runnable": {**art.info.get("not_runnable", {}), **reasons}}
        out[name] = art
    failed: dict[str, str] = {}
    request = {"batch": config.shape.batch, "sequence": config.shape.sequence, "runs": config.runs,
               "warmup": config.warmup, "seconds": config.seconds or 0.0, "top_ops": config.top_ops,
               "prompt": config.generation.prompt, "new_tokens": config.generation.new_tokens}  # fmt: skip
    timed: dict[str, dict[str, list[dict[str, Any]]]] = {d.name: {n: [] for n in plan[d.name]} for d in devices}
    with progress(f"profiling on {len(devices)} devices, {config.rounds} rounds", config.rounds * len(devices)) as bar:
        for r in range(config.rounds):  # the devices in turns: drift between rounds hits every device alike
            for device in devices:
                if device.name in failed:
                    continue
                targets = plan[device.name]
                order = [targets[(i + r) % len(targets)] for i in range(len(targets))]  # rotated
                # the runtime's operator profile once (first round): it times nothing
                req = {**request, "top_ops": request["top_ops"] if r == 0 else 0}
                try:
                    stats = measure(device, [artifacts[n].path for n in order], **req)
                except CompressError as exc:  # one board failing must not lose what the others measured
                    failed[device.name] = str(exc)
                    log.error("profile: %s failed: %s", device.name, exc)
                    for name in targets:
                        art = out.get(name) or artifacts[name]
                        art.info = {**art.info, "profile_failed": {**art.info.get("profile_failed", {}),
                                                                   device.name: str(exc)}}  # fmt: skip
                        out[name] = art
                    continue
                finally:
                    bar.advance()
                for name, st in zip(order, stats, strict=True):
                    timed[device.name][name].append(st)
    for device in devices:
        if device.name in failed:
            continue
        targets = plan[device.name]
        stats = [fastest_round(timed[device.name][n]) for n in targets]
        for name, st in zip(targets, stats, strict=True):
            art = out.get(name) or artifacts[name]
            art.latency = {**art.latency, device.name: st}
            out[name] = art
            log.info("%s on %s: p50 %.3f ms, p90 %s ms (%s %s)", name, device.name, st["p50_ms"],
                     f"{st['p90_ms']:.3f}" if "p90_ms" in st else "-", st.get("runtime"),
                     st.get("runtime_version"))  # fmt: skip
    if len(failed) == len(devices):
        raise StageError("profile: every device failed:\n" + "\n".join(f"  {d}: {m}" for d, m in failed.items()))
    for device in devices:  # after every timing run, so that no evaluation sits between two of them
        if device.name not in failed and device.runtime in ACCURACY_RUNTIMES and device.runner == "local":
            for name in plan[device.name]:
                art = out.get(name) or artifacts[name]
                if art.kind == "onnx" and "accuracy" in art.metrics:
                    out[name] = _accuracy_on(art, device, ctx)
    return out


def fastest_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One artifact's statistics from its rounds: the round with the lowest p50 (the machine's quiet speed), with
    every round's p50 in ``rounds_p50_ms`` and the operator profile of the round that took one."""
    if len(rounds) == 1:
        return dict(rounds[0])
    best = dict(min(rounds, key=lambda st: float(st["p50_ms"])))
    best["rounds_p50_ms"] = [float(st["p50_ms"]) for st in rounds]
    top = next((st["top_ops"] for st in rounds if "top_ops" in st), None)
    if top is not None:
        best["top_ops"] = top
    return best


# runtimes whose numbers differ from onnxruntime's on the same file (OpenVINO runs a static QDQ graph with its own
# int8 kernels: 88.07% against onnxruntime's 87.84% on the flagship's SST-2 test), so that a budget on their device
# judges accuracy on them; local devices only: the data is here
ACCURACY_RUNTIMES = ("openvino",)


def _accuracy_on(art: Artifact, device: DeviceProfile, ctx: Context) -> Artifact:
    """``art`` with its test accuracy on ``device``'s runtime in ``info["accuracy_on"][device]`` (the export stage
    measured it on onnxruntime): the accuracy a budget on that device checks."""
    pred = get_runtime(device.runtime).predictor(art.path, threads=device.threads, provider=device.provider)
    acc, _ = split_accuracy(pred, ctx.data().test, 32, f"accuracy {art.name} on {device.name}")
    log.info("%s: accuracy %.4f (%s, test split; %.4f on onnxruntime)", art.name, acc, device.name,
             art.metrics["accuracy"])  # fmt: skip
    art.info = {**art.info, "accuracy_on": {**art.info.get("accuracy_on", {}), device.name: acc}}
    return art
