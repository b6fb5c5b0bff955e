"""The self-contained benchmark script: statistics on known samples, feeds for symbolic shapes, and the
local runner with a time budget, CPU pinning and the runtime's profiler, on onnxruntime and OpenVINO."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from compress.devices import DeviceProfile
from compress.errors import DeviceError
from compress.runners import measure, preflight
from compress.runners.base import BENCH_SCRIPT
from tests.runners.test_ssh import _mlp

spec = importlib.util.spec_from_file_location("bench", BENCH_SCRIPT)
assert spec and spec.loader
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_statistics_on_known_samples() -> None:
    ms = [float(v) for v in range(1, 101)]  # 1..100 ms
    s = bench.summarize(ms, batch=4)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["mean_ms"] == pytest.approx(50.5) and s["std_ms"] == pytest.approx(np.std(ms))
    assert s["throughput_per_s"] == pytest.approx(4 * 1000 / 50.5) and s["runs"] == 100


def test_feeds_fill_symbolic_dimensions() -> None:
    feeds = bench.make_feeds([("input_ids", ["batch", "seq"], "tensor(int64)"), ("attention_mask", [-1, -1], "int64"),
                              ("pixel_values", [None, 3, 8, 8], "tensor(float)")], batch=2, sequence=16)  # fmt: skip
    assert feeds["input_ids"].shape == (2, 16) and feeds["attention_mask"].min() == 1
    assert feeds["pixel_values"].shape == (2, 3, 8, 8) and feeds["pixel_values"].dtype == np.float32


def test_graph_inputs_are_read_without_the_onnx_package(tmp_path: Path) -> None:
    """The wire-format reader gives onnx's own input names, on a graph with a KV cache and one without, and the
    script never imports onnx (1.4 s per measurement; boards may not have it)."""
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    def graph(inputs: list[str], path: Path) -> str:
        weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.5] * 16)  # an initializer field to skip
        nodes = [helper.make_node("MatMul", [inputs[0], "w"], ["y"])]
        values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in inputs]
        out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])]
        onnx.save(helper.make_model(helper.make_graph(nodes, "g", values, out, [weight])), str(path))
        return str(path)

    kv = graph(["input_ids", "attention_mask", "past.0.key", "past.0.value"], tmp_path / "kv.onnx")
    plain = graph(["x"], tmp_path / "plain.onnx")
    args = bench.argparse.Namespace(runtime="onnxruntime")
    for path in (kv, plain):
        assert bench.onnx_input_names(path) == [i.name for i in onnx.load(path).graph.input]
    assert bench.is_kv_graph(kv, args) and not bench.is_kv_graph(plain, args)
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff not a model")
    assert not bench.is_kv_graph(str(tmp_path / "junk.onnx"), args)  # the runtime's loader then says why
    code = (f"import argparse, runpy, sys; script = runpy.run_path({str(BENCH_SCRIPT)!r}); "
            f"assert script['is_kv_graph']({kv!r}, argparse.Namespace(runtime='onnxruntime')); "
            "print('onnx' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("runtime,provider", [("onnxruntime", "CPUExecutionProvider"), ("openvino", "CPU")])
def test_local_runner_time_budget_pinning_and_profiler(tmp_path: Path, runtime: str, provider: str) -> None:
    if runtime == "openvino":
        pytest.importorskip("openvino")
    device = DeviceProfile.model_validate({"name": f"local-{runtime}", "runtime": runtime, "provider": provider,
                                           "threads": 1, "cpus": [0]})  # fmt: skip
    preflight(device)
    stats = measure(device, [_mlp(tmp_path / "mlp.onnx")], batch=2, sequence=1, seconds=0.3, warmup=2, top_ops=2)[0]
    assert stats["runs"] >= 10 and stats["runtime"] == runtime and stats["runtime_version"]
    assert stats["cpus"] == [0] and stats["cold_start_ms"] > 0 and stats["peak_rss_mb"] > 0
    assert stats["cpu"]["model"] and isinstance(stats["cpu"]["flags"], list)
    assert 0 < len(stats["top_ops"]) <= 2 and all(0 < op["share"] <= 1 for op in stats["top_ops"])


def test_missing_provider_is_a_clear_error() -> None:
    device = DeviceProfile.model_validate({"name": "gpu", "provider": "CUDAExecutionProvider"})
    with pytest.raises(DeviceError, match="provider CUDAExecutionProvider not in this onnxruntime build"):
        preflight(device)
