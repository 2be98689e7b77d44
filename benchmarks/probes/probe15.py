"""Issue 15 probe: what one call costs the host and the GPU, by kernel shape and mode.

For each shape of run.py (SD3-medium, Flux, SDXL self, SDXL cross) and each mode:
  - do_bench median (ms): what run.py reports (host-bound calls show host time);
  - host time per call (us) with the GPU kept busy by a long sleep, so nothing waits;
  - the GPU kernels of one call (torch.profiler): how many launches, their names and times;
  - the call captured in a CUDA graph and replayed (ms, median of 200 replays timed by
    CUDA events): the GPU time alone.
SDXL self k=1 against k=10 is the anomaly of issue 15 (0.82 against 0.49 ms in run 9); the
short-key path is what SDXL cross takes now.

    python3 benchmarks/probes/probe15.py [--shapes sdxl_self_64x64,sdxl_cross_64x64] [--out DIR]

Writes probe15.txt and probe15.json to --out (default: this folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import sink_attention  # noqa: E402

MODES = {
    "plain": dict(top_k=0),
    "mass": dict(top_k=0, path="none"),
    "sink_score": dict(top_k=1, path="score"),
    "sink_value": dict(top_k=1, path="value"),
    "sink_score_k10": dict(top_k=10, path="score"),
    "sink_value_k10": dict(top_k=10, path="value"),
    "random_k1": dict(top_k=1, path="score", control="random"),
    "shared_k1": dict(top_k=1, path="score", select="shared"),
}
CALLS = 100


def host_us(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda._sleep(1_500_000_000)  # ~1 s of GPU time queued ahead: the host never waits
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / CALLS * 1e6


def kernels(fn) -> dict:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    return {"launches": sum(e.count for e in events) / 10,
            "us": {e.key[:48]: round(e.device_time_total / 10, 2) for e in events}}


def graphed_ms(fn) -> float | None:
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        for _ in range(10):
            graph.replay()
        times = []
        for _ in range(200):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)
    except Exception as error:  # noqa: BLE001 - reported, the probe goes on
        print(f"    graph capture failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="sd3m_1024,flux_1024,sdxl_self_64x64,sdxl_cross_64x64")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, rows = [], []

    def say(line):
        print(line, flush=True)
        lines.append(line)

    say(f"torch {torch.__version__} triton {triton.__version__} {torch.cuda.get_device_name()} "
        f"commit {os.environ.get('SINKATTN_COMMIT')}")
    for name in args.shapes.split(","):
        q, k, v = diffusers_layout(*SHAPES[name])
        for mode, kw in MODES.items():
            def call():
                return sink_attention(q, k, v, **kw)

            for _ in range(3):
                call()
            ms = triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median")
            host = host_us(call)
            profile = kernels(call)
            graph = graphed_ms(call)
            rows.append({"shape": name, "mode": mode, "do_bench_ms": ms, "host_us": host, "graph_ms": graph, **profile})
            say(f"{name} {mode}: do_bench {ms:.4f} ms | host {host:.1f} us | graph {graph if graph is None else round(graph, 4)} ms"
                f" | {profile['launches']:.0f} launches: " + ", ".join(f"{k}={v}" for k, v in profile["us"].items()))
        torch.cuda.empty_cache()
    (out / "probe15.txt").write_text("\n".join(lines) + "\n")
    (out / "probe15.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
