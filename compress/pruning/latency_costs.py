"""Latency as a pruning target: what one head and one FFN unit cost on a device, measured, not assumed.

Four encoders shaped like the model (random weights) are exported and timed on the device's runtime, in
`COST_ROUNDS` benchmark processes that visit them in rotated orders: as they are, with half the heads in every
layer, with half the FFN units, and with half the layers. The slopes give milliseconds per head, per unit
(latency is close to linear in both at a fixed sequence length) and per layer beyond its heads and units
(LayerNorms, residuals, per-kernel overhead: what only removing the whole layer saves); what depends on none of
them (embeddings, the head) is the fixed part. With an int8 deployment the graphs are the int8 ones the runtime deploys,
so the costs are those of the quantized model. A latency budget in ms becomes a fraction of the prunable
(variable) part, which the masks' expected size is driven to; the pruned graph itself is then measured
(`measure_pruned`) and the target corrected (`corrected_fraction`).

Causal LMs are measured the same way as generation: three KV-cache graphs shaped like the model (as it is, with
half its key/value groups, with half its SwiGLU units), the decode milliseconds per token after a prompt of
``sequence`` tokens; the slopes give ms per key/value group and per unit.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.devices import DeviceProfile
from compress.errors import StageError
from compress.pruning.encoder_masks import GroupCosts
from compress.search.latency import TransformerLatency

# the graphs are timed in this many benchmark processes, each relative to the full graph in the same one, and the
# medians are kept: one burst of load from another process must not set the costs (or decide that the model already
# meets its budget); a shared 2-core machine here swung between 18 and 30 ms on the teacher within a minute
COST_ROUNDS = 5

@dataclass
class LatencyCosts:
    costs: GroupCosts  # ms per head, ms per FFN unit
    fixed_ms: float
    full_ms: float
    reference_ms: float | None = None  # the reference graph (a speed-up's teacher), timed in the same rounds


def _unpruned(config: Any) -> dict[str, int]:
    """The search-space shape (an `Arch`) of an encoder with ``config``'s full heads, units and layers."""
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "heads": config.num_attention_heads,
            "ffn": config.intermediate_size}  # fmt: skip


def measure_costs(
    config: Any, device: DeviceProfile, sequence: int, cache_dir: Path, *, precision: str = "fp32",
    statistic: str = "p50", reference: tuple[DeviceProfile, Path] | None = None,
) -> LatencyCosts:  # fmt: skip
    """ms per head, per FFN unit and per whole layer of an encoder shaped like ``config``, timed as deployed
    (``precision="int8"``: the int8 graph the device's runtime deploys, so quantization's gain is in the costs).
    With a ``reference`` graph (the teacher, for a target that is a speed-up over it) every round times it too;
    the reference's ms and the unpruned graph's are then each the fastest round (both at the machine's quiet speed,
    which a speed-up compares), and the per-group costs keep their per-round ratios to the unpruned graph."""
    table = TransformerLatency(device, sequence, config, cache_dir / "prune-latency.json", precision=precision,
                               statistic=statistic)  # fmt: skip
    base = _unpruned(config)
    fewer_layers = base["layers"] // 2
    archs = [base, {**base, "heads": max(1, base["heads"] // 2)}, {**base, "ffn": max(1, base["ffn"] // 2)}]
    if fewer_layers:
        archs.append({**base, "layers": fewer_layers})
    with tempfile.TemporaryDirectory(prefix="compress-prune-lat-") as tmp:
        paths = []
        for i, arch in enumerate(archs):
            paths.append(Path(tmp) / f"m{i}.onnx")
            table.export_full(arch, paths[-1])
        rounds = table.measure(paths, COST_ROUNDS, reference=reference)  # rotated orders
    return costs_from_rounds(rounds, archs, reference=reference is not None)


def costs_from_rounds(rounds: list[list[float]], archs: list[dict[str, int]], *, reference: bool) -> LatencyCosts:
    """The costs from timed rounds: ``rounds[i][r]`` is ``archs[i]`` in round ``r`` (``archs[0]`` unpruned, then half
    the heads, half the units and, when there is a fourth, fewer layers), plus a last row for the reference graph
    when ``reference``."""
    base = archs[0]
    layers, heads, ffn = base["layers"], base["heads"], base["ffn"]
    # each graph relative to the full one in the same round (the machine's speed drifts between rounds, and a
    # slope is a small difference of two large times), scaled by the full graph's median
    rounds = list(rounds)
    full = statistics.median(rounds[0])
    reference_ms = None
    if reference:
        # a speed-up is a ratio of two graphs' quiet speeds: the fastest round of each. A shared machine's slow
        # phases are not uniform: they slowed the 91 MB teacher by 40-70% and a 15 MB int8 student hardly at all
        # (sst2_edge.py, 5 rounds), so the ratio of medians, or of one slow round, overstates the speed-up and
        # prunes too little; the fastest rounds are what the same machine gives when nothing else runs
        reference_ms = min(rounds.pop())
        full = min(rounds[0])
    times = [full * statistics.median(t / f for t, f in zip(r, rounds[0], strict=True)) for r in rounds]
    fewer_heads, fewer_units = times[1:3]
    per_head = max(0.0, (full - fewer_heads) / (layers * (heads - archs[1]["heads"])))
    per_unit = max(0.0, (full - fewer_units) / (layers * (ffn - max(1, ffn // 2)))) if ffn > 1 else 0.0
    # what a layer costs besides its heads and units (LayerNorms, residual adds, the kernels' own overhead): the
    # cost a pruned model keeps until the whole layer goes
    per_layer = 0.0
    if len(archs) > 3:
        per_layer = max(0.0, (full - times[3]) / (layers - archs[3]["layers"]) - heads * per_head - ffn * per_unit)
    fixed = full - layers * (per_layer + heads * per_head + ffn * per_unit)
    return LatencyCosts(GroupCosts(per_head, per_unit, per_layer), fixed, full, reference_ms)


def latency_fraction(lat: LatencyCosts, budget_ms: float, *, key: str = "prune.target.latency_ms") -> float:
    """The fraction of the variable latency that fits in ``budget_ms``; an error when none or all of it does.
    ``key`` names what set the limit in the error (the recipe key, and for a speed-up how it became ms)."""
    if lat.full_ms <= budget_ms:
        raise StageError(f"{key}: the unpruned model already measures {lat.full_ms:.3f} ms <= {budget_ms:.3f} ms.")
    variable = lat.full_ms - lat.fixed_ms
    frac = (budget_ms - lat.fixed_ms) / variable if variable > 0 else -1.0
    if frac <= 0:
        raise StageError(
            f"{key}: {budget_ms:.3f} ms cannot be reached: the model measures {lat.full_ms:.3f} ms "
            f"and {lat.fixed_ms:.3f} ms of it does not depend on heads or FFN units."
        )
    return frac


def predicted_ms(lat: LatencyCosts, kept: float) -> float:
    """What the cost model predicts for a model that keeps ``kept`` of the variable latency: the inverse of
    `latency_fraction`, recorded beside the pruned model so that a profile's measurement can check it."""
    return lat.fixed_ms + kept * (lat.full_ms - lat.fixed_ms)


def measure_pruned(
    module: Any, config: Any, device: DeviceProfile, sequence: int, cache_dir: Path, lat: LatencyCosts, *,
    precision: str = "fp32", statistic: str = "p50",
) -> tuple[float, list[float]]:  # fmt: skip
    """The ms of a pruned encoder ``module`` as deployed, measured in turns with an unpruned encoder shaped like
    ``config`` (the shape the costs ``lat`` were measured on) and scaled by the ``full_ms`` measured then: the
    ratio of two graphs timed in the same benchmark processes is what a machine that has slowed down or sped up
    since does not move. Returns the ms and the ratio of every round."""
    table = TransformerLatency(device, sequence, config, cache_dir / "prune-latency.json", precision=precision,
                               statistic=statistic)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="compress-prune-lat-") as tmp:
        full, pruned = Path(tmp) / "full.onnx", Path(tmp) / "pruned.onnx"
        table.export_full(_unpruned(config), full)
        table.export_model(module, pruned)
        rounds = table.measure([full, pruned], COST_ROUNDS)  # rotated orders
    ratios = [p / f for f, p in zip(*rounds, strict=True)]
    return lat.full_ms * statistics.median(ratios), ratios


def corrected_fraction(lat: LatencyCosts, kept: float, measured_ms: float, aim_ms: float) -> float:
    """The kept fraction to aim for next, after a model that keeps ``kept`` measured ``measured_ms`` where the cost
    model predicted ``predicted_ms(lat, kept)``: the prediction's error on this structure (a ratio) is assumed to
    hold for the next one, so ``predicted_ms(lat, k') * measured / predicted = aim_ms``. Clamped to (0, 1]."""
    predicted = predicted_ms(lat, kept)
    variable = lat.full_ms - lat.fixed_ms
    fraction = (aim_ms * predicted / measured_ms - lat.fixed_ms) / variable if variable > 0 else kept
    return min(1.0, max(0.01, fraction))


def measure_decoder_costs(
    config: Any, device: DeviceProfile, sequence: int, cache_dir: Path, *, precision: str = "fp32",
    statistic: str = "p50", reference: tuple[DeviceProfile, Path] | None = None,
) -> LatencyCosts:  # fmt: skip
    """Decode ms per token of a causal LM shaped like ``config``: per key/value group, per MLP unit, fixed."""
    from compress.exporters.decoder import export_decoder_onnx
    from compress.models.decoder import decoder_layers, decoder_structure, resize_decoder
    from compress.models.task_model import TaskModel
    from compress.runners import measure
    from compress.search.candidates import queries_per_kv

    if reference is not None:
        raise StageError("prune.target.speedup: a causal LM's decode latency is a per-token time, not the teacher's "
                         "forward pass a speed-up is quoted against; give `target.latency_ms` (decode ms per token).")
    if device.runtime not in ("onnxruntime", "openvino"):
        raise StageError(f"prune.target.device: {device.name} runs {device.runtime}; a causal LM's decode latency is "
                         "measured on an onnxruntime or OpenVINO device (its KV-cache graph).")  # fmt: skip
    if precision != "fp32":
        raise StageError("prune.target.precision: a causal LM's decode latency is measured on its fp32 KV-cache graph "
                         "(its quantized forms are 4-bit weight-only); use `precision: fp32`.")  # fmt: skip
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    g = queries_per_kv(config)
    groups = heads // g

    def shaped(kv: int | None = None, units: int | None = None) -> nn.Module:
        """The full shape, or every layer resized through its layout (GPT-2's and OPT's configs name their FFN
        size differently; the layout reads it from the modules), with fresh random weights."""
        from transformers import AutoModelForCausalLM

        cfg = copy.deepcopy(config)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        model = AutoModelForCausalLM.from_config(cfg).eval()
        if kv is not None or units is not None:
            structure = decoder_structure(model)
            resize_decoder(model, {"kv_heads": [kv or n for n in structure["kv_heads"]],
                                   "ffn": [units or f for f in structure["ffn"]]})  # fmt: skip
            with torch.no_grad():
                for layer in decoder_layers(model):
                    for p in layer.parameters():
                        p.normal_(0.0, 0.02)
        return model

    full_model = shaped()
    ffn = decoder_structure(full_model)["ffn"][0]
    fewer = max(1, groups // 2)
    models = [full_model, shaped(kv=fewer), shaped(units=max(1, ffn // 2))]
    with tempfile.TemporaryDirectory(prefix="compress-prune-lat-") as tmp:
        paths = []
        for i, module in enumerate(models):
            paths.append(Path(tmp) / f"m{i}.onnx")
            export_decoder_onnx(TaskModel(module, "hf", "lm", int(config.vocab_size)), paths[-1], opset=17)
        stats = measure(device, paths, batch=1, sequence=sequence, runs=120, warmup=1, prompt=sequence,
                        new_tokens=32)  # fmt: skip
    full, fewer_groups, fewer_units = (float(s[f"decode_{statistic}_ms"]) for s in stats)
    per_group = max(0.0, (full - fewer_groups) / (layers * (groups - fewer))) if groups > fewer else 0.0
    per_unit = max(0.0, (full - fewer_units) / (layers * (ffn - max(1, ffn // 2)))) if ffn > 1 else 0.0
    fixed = full - layers * (groups * per_group + ffn * per_unit)
    return LatencyCosts(GroupCosts(per_group, per_unit), fixed, full)
