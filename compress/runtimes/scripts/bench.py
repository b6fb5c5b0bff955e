"""Self-contained latency benchmark (stdlib + numpy + the runtime's own package; nothing from compress).

Runs in its own process so that thread settings, CPU pinning, peak memory and cold start are measured
cleanly, and is copied unchanged to remote boards (SSH runner). Writes one JSON object per model (a list for
several) to --out, or prints it on stdout.

    python bench.py MODEL.onnx [MODEL2 ...] --runtime onnxruntime --threads 2 --batch 1 --sequence 128 \\
        --runs 100 --warmup 10 [--seconds 0] [--cpus 0,1] [--top-ops 10] [--out result.json] \\
        [--prompt 128 --new-tokens 64]

A causal LM is measured as generation instead: a KV-cache graph (inputs ``past.<i>.key``) on onnxruntime or
OpenVINO (compiled with dynamic shapes), an ExecuTorch program with a static cache on ExecuTorch, a GGUF file on
llama.cpp (``--runtime llamacpp``, llama-cpp-python; what benchmarks compare with): time to first
token (prefill of a ``--prompt``-token prompt) and milliseconds per decoded token, over ``runs // 10`` (at least
3) generations of ``--new-tokens`` tokens.

Measurement: session creation (cold start) and first run timed apart; ``warmup`` untimed runs; then ``runs``
timed runs, or as many as fit in ``seconds`` (at least 10) when that is set. Per-operator times come from the
runtime's own profiler in a separate profiled session, after the timed runs, so they never slow the numbers
reported as latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any, Dict  # noqa: UP035

import numpy as np

Feeds = Dict[str, Any]  # noqa: UP006 - runs on the board's Python, 3.8 included
INTERESTING_FLAGS = (
    *("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni"),
    *("amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16", "fphp"),
)


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def cpu_info() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags that decide which kernels a runtime picks."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and value.strip():
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags |= set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": sorted(f for f in flags if f in INTERESTING_FLAGS)}


def summarize(ms: list[float], batch: int) -> dict[str, float]:
    arr = np.asarray(sorted(ms))
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "std_ms": float(arr.std()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "throughput_per_s": float(batch * 1000.0 / arr.mean()),
        "runs": len(ms),
    }


def make_feeds(inputs: list[tuple[str, list[Any], str]], batch: int, sequence: int, seed: int = 0) -> Feeds:
    """Random but valid inputs: (name, shape with symbolic dims, element type) -> arrays."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dims, kind in inputs:
        # symbolic dims (a name, None or -1): batch first, sequence after
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else sequence) for i, d in enumerate(dims)]
        if "int" in kind:
            if "mask" in name:
                feeds[name] = np.ones(shape, dtype=np.int64)
            elif "type" in name:
                feeds[name] = np.zeros(shape, dtype=np.int64)
            else:
                feeds[name] = rng.integers(5, 100, size=shape, dtype=np.int64)  # valid in any vocabulary
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# ---- runtimes: load(model, args) -> (run(feeds), feeds, info), and op_times(model, args, feeds, n) ------------


def _ort_session(model: str, args: argparse.Namespace, profile_dir: str | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_dir:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(model, opts, providers=[args.provider])


def ort_load(model: str, args: argparse.Namespace) -> tuple[Callable[[Feeds], Any], Feeds, dict[str, Any]]:
    import onnxruntime as ort

    session = _ort_session(model, args)
    inputs = [(i.name, list(i.shape), i.type) for i in session.get_inputs()]
    feeds = make_feeds(inputs, args.batch, args.sequence)
    info = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "provider": session.get_providers()[0]}
    return (lambda f: session.run(None, f)), feeds, info


def ort_op_times(model: str, args: argparse.Namespace, feeds: Feeds, n: int) -> dict[str, float]:
    """Total microseconds per operator type from onnxruntime's own profiler (its JSON trace)."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _ort_session(model, args, tmp)
        for _ in range(n):
            session.run(None, feeds)
        trace = session.end_profiling()
        with open(trace if os.path.isabs(trace) else os.path.join(tmp, os.path.basename(trace))) as fh:
            events = json.load(fh)
    totals: dict[str, float] = {}
    for ev in events:
        op = ev.get("args", {}).get("op_name")
        if ev.get("cat") == "Node" and op and ev.get("name", "").endswith("_kernel_time"):
            totals[op] = totals.get(op, 0.0) + float(ev.get("dur", 0))
    return {op: us / n for op, us in totals.items()}


def ov_load(model: str, args: argparse.Namespace) -> tuple[Callable[[Feeds], Any], Feeds, dict[str, Any]]:
    import openvino as ov

    core = ov.Core()
    net = core.read_model(model)
    shapes = {}
    inputs = []
    for port in net.inputs:
        dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        kind = "int64" if port.get_element_type().is_integral() else "float"
        inputs.append((port.get_any_name(), dims, kind))
    feeds = make_feeds(inputs, args.batch, args.sequence)
    for name, arr in feeds.items():
        shapes[name] = list(arr.shape)
    net.reshape(shapes)  # static shapes: what OpenVINO compiles best
    compiled, request, info = _ov_compile(core, net, args)
    return (lambda f: request.infer(f)), feeds, info


def _ov_compile(core: Any, net: Any, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """The model compiled for latency on the device (threads as asked), an infer request, and what ran it."""
    import openvino as ov

    device = args.provider or "CPU"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    compiled = core.compile_model(net, device, config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # bf16 by default on AMX CPUs
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    info = {"runtime": "openvino", "runtime_version": ov.get_version(), "provider": device, "precision": precision}
    return compiled, compiled.create_infer_request(), info


def ov_op_times(model: str, args: argparse.Namespace, feeds: Feeds, n: int) -> dict[str, float]:
    """Microseconds per layer type from OpenVINO's performance counters (PERF_COUNT)."""
    import openvino as ov

    core = ov.Core()
    net = core.read_model(model)
    net.reshape({k: list(v.shape) for k, v in feeds.items()})
    config: dict[str, Any] = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"}
    if args.threads:
        config["INFERENCE_NUM_THREADS"] = args.threads
    request = core.compile_model(net, args.provider or "CPU", config).create_infer_request()
    totals: dict[str, float] = {}
    for _ in range(n):
        request.infer(feeds)
        for info in request.get_profiling_info():
            us = info.real_time.total_seconds() * 1e6
            totals[info.node_type] = totals.get(info.node_type, 0.0) + us
    return {op: us / n for op, us in totals.items()}


_ET_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 6: "float", 7: "double"}  # ScalarType


def et_load(model: str, args: argparse.Namespace) -> tuple[Callable[[Feeds], Any], Feeds, dict[str, Any]]:
    """ExecuTorch program (.pte): static shapes from the program; integer inputs are ids then mask."""
    import torch
    from executorch.runtime import Runtime

    if args.threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(args.threads)
    method = Runtime.get().load_program(model).load_method("forward")
    meta = method.metadata
    inputs = []
    for i in range(meta.num_inputs()):
        tensor = meta.input_tensor_meta(i)
        kind = _ET_DTYPES.get(int(tensor.dtype()), "float")
        name = ("input_ids", "attention_mask")[i] if "int" in kind and i < 2 else f"input{i}"
        inputs.append((name, list(tensor.sizes()), kind))
    feeds = make_feeds(inputs, args.batch, args.sequence)
    tensors = [torch.from_numpy(feeds[name]) for name, _, _ in inputs]
    info = {"runtime": "executorch", "runtime_version": _et_version(), "provider": "XNNPACK"}
    return (lambda f: method.execute(tensors)), feeds, info


def no_op_times(model: str, args: argparse.Namespace, feeds: Feeds, n: int) -> dict[str, float]:
    return {}  # ExecuTorch's per-operator profile (ETDump) needs a devtools build of the runtime


def _no_forward(model: str, args: argparse.Namespace) -> tuple[Callable[[Feeds], Any], Feeds, dict[str, Any]]:
    raise SystemExit(f"{model}: llama.cpp runs GGUF causal LMs, measured as generation only")


RUNTIMES = {
    "onnxruntime": (ort_load, ort_op_times),
    "openvino": (ov_load, ov_op_times),
    "executorch": (et_load, no_op_times),
    "llamacpp": (_no_forward, no_op_times),  # GGUF causal LMs: generation only
}


# ---- generation: a causal LM's KV-cache graph (inputs input_ids, attention_mask, past.<i>.key/value) -----------


def is_kv_graph(model: str, args: argparse.Namespace) -> bool:
    """A causal LM: an ONNX graph with ``past.<i>.key`` inputs, or an ExecuTorch program with a static cache
    (inputs ``input_ids (1, sequence)`` and a 1-D ``cache_position``)."""
    if args.runtime == "llamacpp":  # a GGUF file: always a causal LM
        return True
    if args.runtime == "executorch" and model.endswith(".pte"):
        from executorch.runtime import Runtime

        meta = Runtime.get().load_program(model).metadata("forward")
        return meta.num_inputs() == 2 and len(meta.input_tensor_meta(1).sizes()) == 1
    if args.runtime not in ("onnxruntime", "openvino") or not model.endswith(".onnx"):
        return False
    try:
        return "past.0.key" in onnx_input_names(model)
    except (OSError, ValueError, IndexError):  # not a readable ONNX file: the runtime's own loader says why
        return False


# The graph's input names, read from the protobuf wire format with the standard library. `onnx.load` would do it,
# but importing onnx costs 1.4 s per process here (ml_dtypes' extension alone 0.8 s: more than many measurements
# take), and a board that runs onnxruntime need not have the onnx package at all.
def _varint(buf: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _messages(buf: Any, start: int, end: int, wanted: int) -> list[tuple[int, int]]:
    """The (start, end) spans of the length-delimited fields numbered ``wanted`` in the message at buf[start:end]."""
    found, pos = [], start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            pos = _varint(buf, pos)[1]
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if key >> 3 == wanted:
                found.append((pos, pos + size))
            pos += size
        else:
            raise ValueError(f"not an ONNX model (protobuf wire type {wire})")
    return found


def onnx_input_names(model: str) -> list[str]:
    """ModelProto.graph (field 7) -> GraphProto.input (field 11) -> ValueInfoProto.name (field 1)."""
    import mmap

    with open(model, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        names = []
        for g_start, g_end in _messages(buf, 0, len(buf), 7):
            for i_start, i_end in _messages(buf, g_start, g_end, 11):
                names += [bytes(buf[a:b]).decode("utf-8") for a, b in _messages(buf, i_start, i_end, 1)]
        return names


class ExplicitCache:
    """A KV-cache graph (cache in, cache out) behind ``run`` (feeds -> outputs in graph order): onnxruntime or
    OpenVINO."""

    def __init__(self, run: Callable[[Feeds], list[Any]], pasts: list[tuple[str, list[Any]]], batch: int) -> None:
        self.run, self.pasts, self.batch = run, pasts, batch
        self.out: list[Any] = []
        self.total = 0

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.total = ids.shape[1]
        feeds = {"input_ids": ids, "attention_mask": np.ones((self.batch, self.total), np.int64)}
        feeds.update({n: np.zeros((self.batch, d[1], 0, d[3]), np.float32) for n, d in self.pasts})
        self.out = self.run(feeds)
        return np.asarray(self.out[0][:, -1])

    def decode(self, token: np.ndarray) -> np.ndarray:
        self.total += 1
        feeds = {"input_ids": token, "attention_mask": np.ones((self.batch, self.total), np.int64)}
        feeds.update({n: self.out[1 + k] for k, (n, _) in enumerate(self.pasts)})
        self.out = self.run(feeds)
        return np.asarray(self.out[0][:, -1])

    def cache_bytes(self) -> int:
        return sum(int(o.nbytes) for o in self.out[1:])


class StaticCache:
    """An ExecuTorch program holding its own fixed-size cache: ``(input_ids, cache_position) -> logits``."""

    def __init__(self, method: Any) -> None:
        import torch

        self.method, self.torch, self.position = method, torch, 0

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        n = ids.shape[1]
        out = self.method.execute([self.torch.from_numpy(ids), self.torch.arange(n)])[0]
        self.position = n
        return out[:, -1].numpy()

    def decode(self, token: np.ndarray) -> np.ndarray:
        out = self.method.execute([self.torch.from_numpy(token), self.torch.tensor([self.position])])[0]
        self.position += 1
        return out[:, -1].numpy()

    def cache_bytes(self) -> int:
        return 0  # inside the program's memory plan (in `model_rss_mb`), not returned


def ort_session(model: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    import onnxruntime as ort

    session = _ort_session(model, args)
    pasts = [(i.name, list(i.shape)) for i in session.get_inputs() if i.name.startswith("past.")]
    info = {"runtime": "onnxruntime", "runtime_version": ort.__version__, "provider": session.get_providers()[0]}
    return ExplicitCache(lambda f: session.run(None, f), pasts, args.batch), info


def ov_name(port: Any) -> str:
    """The port's ONNX input name: OpenVINO may give a tensor several names (``past.0.key`` and the internal
    ``/Concat_output_0`` it feeds), and `get_any_name` may pick the internal one."""
    names = sorted(port.get_names())
    return next((n for n in names if not n.startswith("/")), port.get_any_name())


def ov_session(model: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The same on OpenVINO, compiled with dynamic shapes (the prompt, then a growing cache)."""
    import openvino as ov

    core = ov.Core()
    compiled, request, info = _ov_compile(core, core.read_model(model), args)
    pasts = [(name, [d.get_length() if d.is_static else -1 for d in p.get_partial_shape()])
             for p in compiled.inputs for name in [ov_name(p)] if name.startswith("past.")]  # fmt: skip

    def step(feeds: Feeds) -> list[Any]:
        result = request.infer(feeds)
        return [np.asarray(result[o]) for o in compiled.outputs]

    return ExplicitCache(step, pasts, args.batch), info


def et_session(model: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """An ExecuTorch program with a static cache (batch 1)."""
    from executorch.runtime import Runtime

    if args.threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(args.threads)
    if args.batch != 1:
        raise SystemExit(f"{model}: ExecuTorch decoder programs are exported for batch 1 (got --batch {args.batch})")
    method = Runtime.get().load_program(model).load_method("forward")
    return StaticCache(method), {"runtime": "executorch", "runtime_version": _et_version(), "provider": "XNNPACK"}


def _et_version() -> str:
    try:
        from importlib.metadata import version

        return version("executorch")
    except Exception:  # noqa: BLE001
        return "unknown"


class LlamaCppSession:
    """A GGUF file on llama.cpp (llama-cpp-python), batch 1: what llama.cpp users run, measured the same way
    (benchmarks compare our graphs with it; the pipeline never exports GGUF). The cache lives in llama.cpp's
    context (its size is not returned)."""

    def __init__(self, model: str, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=model, n_ctx=context, n_batch=min(512, context), n_threads=threads or None,
                         n_threads_batch=threads or None, verbose=False)  # fmt: skip

    def _last(self) -> np.ndarray:
        return np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)[None, :]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.llm.reset()
        self.llm.eval([int(t) for t in ids[0]])
        return self._last()

    def decode(self, token: np.ndarray) -> np.ndarray:
        self.llm.eval([int(token[0, 0])])
        return self._last()

    def cache_bytes(self) -> int:
        return 0


def llamacpp_session(model: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    if args.batch != 1:
        raise SystemExit(f"{model}: llama.cpp is measured at batch 1 (got --batch {args.batch})")
    from importlib.metadata import version

    session = LlamaCppSession(model, args.threads, args.prompt + args.new_tokens + 8)
    return session, {"runtime": "llamacpp", "runtime_version": version("llama-cpp-python"), "provider": "CPU"}


GENERATION = {"onnxruntime": ort_session, "openvino": ov_session, "executorch": et_session,
              "llamacpp": llamacpp_session}  # fmt: skip


def measure_generation(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time to first token (the prompt's prefill with an empty cache) and decode milliseconds per token (one token
    at a time through the KV cache, greedy), over ``generations`` generations of ``--new-tokens`` after a
    ``--prompt``-token prompt. ``p50_ms`` / ``p90_ms`` are per generated token."""
    base_rss = rss_mb()
    t0 = time.perf_counter()
    session, info = GENERATION[args.runtime](model, args)
    cold_ms = (time.perf_counter() - t0) * 1000.0
    rng = np.random.default_rng(0)
    batch, prompt, new = args.batch, args.prompt, args.new_tokens
    cache_bytes = [0]

    def generate() -> tuple[float, list[float]]:
        ids = rng.integers(5, 100, size=(batch, prompt), dtype=np.int64)
        t = time.perf_counter_ns()
        last = session.prefill(ids)
        ttft = (time.perf_counter_ns() - t) / 1e6
        steps = []
        for _ in range(new):
            token = last.argmax(-1).reshape(batch, 1).astype(np.int64)
            t = time.perf_counter_ns()
            last = session.decode(token)
            steps.append((time.perf_counter_ns() - t) / 1e6)
        cache_bytes[0] = session.cache_bytes()
        return ttft, steps

    t0 = time.perf_counter()
    generate()
    first_ms = (time.perf_counter() - t0) * 1000.0
    for _ in range(min(args.warmup, 2)):
        generate()
    count = max(3, args.runs // 10)  # `runs` counts forward passes elsewhere: a generation is many of them
    ttfts: list[float] = []
    decode: list[float] = []
    start = time.perf_counter()
    while (len(ttfts) < count) if args.seconds <= 0 else (time.perf_counter() - start < args.seconds or len(ttfts) < 3):
        ttft, steps = generate()
        ttfts.append(ttft)
        decode += steps
    result: dict[str, Any] = dict(summarize(decode, batch))
    ttft_arr, dec = np.asarray(ttfts), np.asarray(decode)
    result.update({
        "samples_ms": [round(t, 4) for t in decode],
        "ttft_p50_ms": float(np.percentile(ttft_arr, 50)), "ttft_p90_ms": float(np.percentile(ttft_arr, 90)),
        "decode_p50_ms": float(np.percentile(dec, 50)), "decode_p90_ms": float(np.percentile(dec, 90)),
        "tokens_per_s": float(batch * 1000.0 / np.percentile(dec, 50)),
        "tokens_per_s_p90": float(batch * 1000.0 / np.percentile(dec, 90)),
        "generation": {"prompt": prompt, "new_tokens": new, "generations": len(ttfts)},
        # the cache at the end of a generation, what memory adds to weights (None: inside the program's plan)
        "kv_cache_mb": cache_bytes[0] / 1e6 if cache_bytes[0] else None,
        **info,
        "cold_start_ms": cold_ms, "first_run_ms": first_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "model_rss_mb": rss_mb() - base_rss,
        "threads": args.threads,
        "cpus": sorted(os.sched_getaffinity(0)) if args.cpus and hasattr(os, "sched_getaffinity") else None,
        "shape": {"batch": batch, "prompt": prompt, "new_tokens": new},
        "machine": platform.machine(), "cpu": cpu_info(),
    })  # fmt: skip
    return result


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    if is_kv_graph(model, args):
        return measure_generation(model, args)
    load, op_times = RUNTIMES[args.runtime]
    base_rss = rss_mb()
    t0 = time.perf_counter()
    run, feeds, info = load(model, args)
    cold_ms = (time.perf_counter() - t0) * 1000.0
    t0 = time.perf_counter()
    run(feeds)
    first_ms = (time.perf_counter() - t0) * 1000.0
    for _ in range(args.warmup):
        run(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while (
        (len(times) < args.runs)
        if args.seconds <= 0
        else (time.perf_counter() - start < args.seconds or len(times) < 10)
    ):
        t0 = time.perf_counter_ns()
        run(feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    result: dict[str, Any] = dict(summarize(times, args.batch))
    result["samples_ms"] = [round(t, 4) for t in times]  # raw: `compress compare` tests shifts against noise
    result.update(info)
    result.update({
        "cold_start_ms": cold_ms,
        "first_run_ms": first_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "model_rss_mb": rss_mb() - base_rss,
        "threads": args.threads,
        "cpus": sorted(os.sched_getaffinity(0)) if args.cpus and hasattr(os, "sched_getaffinity") else None,
        "shape": {"batch": args.batch, "sequence": args.sequence},
        "machine": platform.machine(),
        "cpu": cpu_info(),
    })  # fmt: skip
    if args.top_ops:
        ops = op_times(model, args, feeds, min(len(times), 20))
        total = sum(ops.values()) or 1.0
        top = sorted(((op, us) for op, us in ops.items() if us > 0), key=lambda kv: -kv[1])[: args.top_ops]
        result["top_ops"] = [{"op": op, "us": us, "share": us / total} for op, us in top]
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+", help="one model gives one JSON object; several give a JSON list")
    p.add_argument("--runtime", default="onnxruntime", choices=sorted(RUNTIMES))
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the runtime's default)")
    p.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime provider / OpenVINO device")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sequence", type=int, default=128)
    p.add_argument("--prompt", type=int, default=128, help="causal LMs (KV-cache graphs): prompt tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="causal LMs: tokens generated after the prompt")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seconds", type=float, default=0.0, help="time budget instead of --runs (0: use --runs)")
    p.add_argument("--cpus", default="", help="pin the process to these CPUs, e.g. 0,1 (Linux)")
    p.add_argument("--top-ops", type=int, default=0, help="per-operator times from the runtime's profiler")
    p.add_argument("--out", default="", help="write the JSON here instead of stdout")
    args = p.parse_args()
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    results = [measure(m, args) for m in args.models]
    text = json.dumps(results[0] if len(results) == 1 else results)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
