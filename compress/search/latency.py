"""Latency lookup tables per device: measured building blocks, summed to predict a candidate's latency.

Measuring every candidate end to end is slow (export + a benchmark process each). Candidates of one space
share blocks, so each distinct block is exported once and timed on the device's own runtime, all missing blocks
of a generation together, each the median of `TABLE_ROUNDS` benchmark processes that visit them in rotated
orders; the table is cached on disk per device and shape. A candidate's
prediction is the sum of its blocks. `measure` times whole candidates, to report the table's error.

- CNN: stem, each block (type, channels in/out, kernel, stride, expansion, input resolution), head; the
  per-call overhead of the runtime (timed on a trivial graph) is counted once, not once per block.
- Transformer: per (hidden, heads, ffn), a 1-layer and a 3-layer encoder are timed; a candidate with L layers
  is predicted as ``t1 + (L - 1) * (t3 - t1) / 2``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compress.devices import DeviceProfile
from compress.errors import StageError
from compress.fileio import atomic_write_text
from compress.models.structure import current_structure, head_size
from compress.runners import measure, preflight
from compress.search.candidates import build_transformer
from compress.search.space import Arch, CnnSpace, Space, arch_key

log = logging.getLogger("compress")
RUNS, WARMUP = 30, 5
# Table entries are the median of this many rounds (rotated orders, one benchmark process each): a burst of
# load from another process on a shared machine slows one round, and must not exclude a candidate (or admit one).
TABLE_ROUNDS = 3


def _export_module(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
    axes = {n: {0: "batch", 1: "sequence"} for n in names} if len(names) == 2 else {names[0]: {0: "batch"}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), args, str(path), input_names=names, output_names=["out"],
            dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # type: ignore[no-any-return]


class LatencyTable:
    """Measured block latencies for one device and input shape, cached in ``cache_file``."""

    def __init__(self, device: DeviceProfile, shape: dict[str, int], cache_file: Path, statistic: str = "p50") -> None:
        self.device, self.shape, self.cache_file = device, shape, cache_file
        self.statistic = f"{statistic}_ms"  # the percentile a budget limits: p50 or p90
        preflight(device)  # runtime installed / host reachable, before any export work
        self.table: dict[str, float] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        self.measured_blocks = 0

    # ---- measuring -----------------------------------------------------------------------------
    def _fill(self, builders: dict[str, Callable[[Path], None]]) -> None:
        """Export and time the missing entries, all in one benchmark process; then save the table."""
        missing = {k: b for k, b in builders.items() if k not in self.table}
        if not missing:
            return
        with tempfile.TemporaryDirectory(prefix="compress-lat-") as tmp:
            paths = []
            for i, build in enumerate(missing.values()):
                paths.append(Path(tmp) / f"b{i}.onnx")
                build(paths[-1])
            rounds = self.measure(paths, TABLE_ROUNDS, runs=RUNS, warmup=WARMUP)
            times = [statistics.median(r) for r in rounds]
        self.table.update(zip(missing, times, strict=True))
        self.measured_blocks += len(missing)
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.cache_file, json.dumps(self.table, indent=0, sort_keys=True))

    def measure(
        self, paths: list[Path], rounds: int = 1, runs: int = 100, warmup: int = 10,
        reference: tuple[DeviceProfile, Path] | None = None,
    ) -> list[list[float]]:  # fmt: skip
        """Latency (the table's percentile) of exported graphs in ``rounds`` benchmark processes, each visiting
        them in a rotated order (so that drift over a process does not favour the ones measured first): per graph,
        its latency in every round. ``reference`` (a device and a graph, e.g. the teacher on the device a speed-up
        is quoted against) is timed in its own process right before every round, and comes last in the result."""
        out: list[list[float]] = [[] for _ in [*paths, *([reference] if reference else [])]]
        for r in range(rounds):
            if reference is not None:
                (st,) = measure(reference[0], [reference[1]], batch=1, sequence=self.shape["sequence"], runs=runs,
                                warmup=warmup)  # fmt: skip
                out[-1].append(float(st[self.statistic]))
            order = [(i + r) % len(paths) for i in range(len(paths))]
            stats = measure(self.device, [paths[i] for i in order], batch=1, sequence=self.shape["sequence"],
                            runs=runs, warmup=warmup)  # fmt: skip
            for i, st in zip(order, stats, strict=True):
                out[i].append(float(st[self.statistic]))
        return out


class CnnLatency(LatencyTable):
    def __init__(
        self, device: DeviceProfile, image_shape: tuple[int, ...], classes: int, cache: Path, statistic: str = "p50"
    ) -> None:
        super().__init__(device, {"batch": 1, "sequence": 1}, cache, statistic)
        self.image_shape, self.classes = image_shape, classes

    def _blocks(self, arch: Arch) -> dict[str, Callable[[Path], None]]:
        from compress.models.cnn import CNN

        spec = CnnSpace.to_spec(arch).model_copy(
            update={"in_channels": self.image_shape[0], "num_classes": self.classes}
        )
        net = CNN(spec)
        c, h, w = self.image_shape
        x = torch.zeros(1, c, h, w)
        parts: list[tuple[str, nn.Module]] = [("stem", net.stem)]
        for si, stage in enumerate(net.stages):
            blocks: list[nn.Module] = list(stage.children())
            parts += [(f"s{si}b{bi}", block) for bi, block in enumerate(blocks)]
        out: dict[str, Callable[[Path], None]] = {}
        for _, module in parts:
            key = f"{type(module).__name__}:{tuple(x.shape)}:{_signature(module)}"
            out[key] = _exporter(module, x)
            with torch.no_grad():
                x = module(x)
        head = nn.Sequential(net.pool, nn.Flatten(1), net.head)
        out[f"head:{tuple(x.shape)}:{self.classes}"] = _exporter(head, x)
        out["overhead"] = _exporter(nn.ReLU(), torch.zeros(1, 1))
        return out

    def export_full(self, arch: Arch, path: Path) -> None:
        from compress.models.cnn import CNN

        spec = CnnSpace.to_spec(arch).model_copy(
            update={"in_channels": self.image_shape[0], "num_classes": self.classes}
        )
        _export_module(CNN(spec), (torch.zeros(1, *self.image_shape),), ["pixel_values"], path)

    def predict(self, archs: list[Arch]) -> list[float]:
        blocks = [self._blocks(a) for a in archs]
        self._fill({k: b for bl in blocks for k, b in bl.items()})
        over = self.table["overhead"]
        return [over + sum(max(0.0, self.table[k] - over) for k in bl if k != "overhead") for bl in blocks]


def _signature(module: nn.Module) -> str:
    convs = [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.groups) for m in module.modules()
             if isinstance(m, nn.Conv2d)]  # fmt: skip
    return json.dumps(convs, separators=(",", ":"))


def _exporter(module: nn.Module, x: torch.Tensor) -> Callable[[Path], None]:
    return lambda path: _export_module(module, (x,), ["pixel_values"], path)


class TransformerLatency(LatencyTable):
    """Encoders timed as deployed: the fp32 export, or (``precision="int8"``) the int8 graph the device's runtime
    runs: onnxruntime's fused dynamic-int8 graph, or on OpenVINO the static QDQ graph (OpenVINO reads no
    onnxruntime contrib operators, and runs QDQ MatMuls as int8 kernels)."""

    def __init__(
        self, device: DeviceProfile, sequence: int, teacher_config: Any, cache: Path, *, precision: str = "fp32",
        statistic: str = "p50",
    ) -> None:  # fmt: skip
        super().__init__(device, {"batch": 1, "sequence": sequence}, cache, statistic)
        self.config, self.precision = teacher_config, precision

    def _builder(self, arch: Arch) -> Callable[[Path], None]:
        return lambda path: self.export_model(build_transformer(self.config, arch), path)

    def export_model(self, module: nn.Module, path: Path) -> None:
        """An encoder with a classification head (a candidate, or a pruned model with its own per-layer head
        and unit counts) exported as deployed: fp32, or int8 as the device's runtime runs it."""
        ids = torch.full((1, self.shape["sequence"]), min(1000, self.config.vocab_size - 1), dtype=torch.long)
        fp32 = path.with_suffix(".fp32.onnx") if self.precision == "int8" else path
        _export_module(_Logits(module), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], fp32)
        if self.precision != "int8":
            return
        from compress.quant import ort as ortq

        if self.device.runtime == "openvino":
            # calibration ranges change no kernel, so two synthetic inputs do; the operators are the export
            # stage's for encoders (MatMul, Gemm), per-channel weights as deployed
            rng = np.random.default_rng(0)
            batches = ({"input_ids": rng.integers(0, self.config.vocab_size, ids.shape, dtype=np.int64),
                        "attention_mask": np.ones(ids.shape, dtype=np.int64)} for _ in range(2))  # fmt: skip
            ortq.quantize_static(fp32, path, batches, op_types=ortq.TEXT_OPS, method="minmax")
        else:
            d = head_size(module.config)
            heads = next((h for h in current_structure(module)["heads"] if h), 1)  # fused per layer after
            ortq.fused_dynamic_int8(fp32, path, num_heads=heads, hidden_size=heads * d, head_size=d)
        fp32.unlink()

    def predict(self, archs: list[Arch]) -> list[float]:
        need: dict[str, Callable[[Path], None]] = {}
        for a in archs:
            for layers in (1, 3):
                sub = {**a, "layers": layers}
                need[arch_key(sub)] = self._builder(sub)
        self._fill(need)
        out = []
        for a in archs:
            t1 = self.table[arch_key({**a, "layers": 1})]
            t3 = self.table[arch_key({**a, "layers": 3})]
            out.append(t1 + (a["layers"] - 1) * max(0.0, t3 - t1) / 2)
        return out

    def export_full(self, arch: Arch, path: Path) -> None:
        self._builder(arch)(path)


def latency_model(
    space: Space, device: DeviceProfile, *, sequence: int, teacher: Any, image_shape: tuple[int, ...] | None,
    classes: int, cache_dir: Path, precision: str = "fp32", statistic: str = "p50",
) -> CnnLatency | TransformerLatency:  # fmt: skip
    name = f"{device.name}-t{device.threads or 0}"
    if isinstance(space, CnnSpace):
        if precision != "fp32":
            raise StageError("search.budget.precision: int8 latency tables time Transformer encoders; a CNN space "
                             "is timed in fp32 (remove `precision: int8`).")  # fmt: skip
        assert image_shape is not None
        shape = "x".join(map(str, image_shape))
        return CnnLatency(device, image_shape, classes, cache_dir / f"cnn-{name}-{shape}-{statistic}.json", statistic)
    cfg = teacher.module.config
    tag = f"{cfg.model_type}-v{cfg.vocab_size}-s{sequence}-{precision}-{statistic}"
    return TransformerLatency(device, sequence, cfg, cache_dir / f"transformer-{name}-{tag}.json",
                              precision=precision, statistic=statistic)  # fmt: skip
