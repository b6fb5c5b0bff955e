"""Self-contained onnxruntime latency benchmark (stdlib + numpy + onnxruntime only).

Runs in its own process so that thread settings, peak memory and cold start are measured cleanly; it can be
copied to a remote board and run there unchanged. Prints one JSON object on stdout.

    python ort_bench.py MODEL.onnx --threads 2 --batch 1 --sequence 128 --runs 100 --warmup 10
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import onnxruntime as ort


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_inputs(session: ort.InferenceSession, batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [
            batch if i == 0 and not isinstance(d, int) else d if isinstance(d, int) else sequence
            for i, d in enumerate(inp.shape)
        ]
        if "int" in inp.type:
            if "mask" in inp.name:
                feeds[inp.name] = np.ones(shape, dtype=np.int64)
            elif "type" in inp.name:
                feeds[inp.name] = np.zeros(shape, dtype=np.int64)
            else:
                feeds[inp.name] = rng.integers(5, 100, size=shape, dtype=np.int64)  # valid in any vocabulary
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def percentile(sorted_ms: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(sorted_ms), q))


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


def measure(model: str, args: argparse.Namespace) -> dict[str, object]:
    base_rss = rss_mb()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    session = ort.InferenceSession(model, opts, providers=[args.provider])
    cold_ms = (time.perf_counter() - t0) * 1000.0
    feeds = make_inputs(session, args.batch, args.sequence)
    t0 = time.perf_counter()
    session.run(None, feeds)
    first_ms = (time.perf_counter() - t0) * 1000.0
    for _ in range(args.warmup):
        session.run(None, feeds)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result: dict[str, object] = dict(summarize(times, args.batch))
    result.update(
        {
            "cold_start_ms": cold_ms,
            "first_run_ms": first_ms,
            "peak_rss_mb": peak,
            "model_rss_mb": rss_mb() - base_rss,
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "provider": session.get_providers()[0],
            "threads": args.threads,
            "shape": {"batch": args.batch, "sequence": args.sequence},
            "machine": platform.machine(),
        }
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+", help="one model prints one JSON object; several print a JSON list")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--provider", default="CPUExecutionProvider")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sequence", type=int, default=128)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    args = p.parse_args()
    results = [measure(m, args) for m in args.models]
    print(json.dumps(results[0] if len(results) == 1 else results))


if __name__ == "__main__":
    main()
