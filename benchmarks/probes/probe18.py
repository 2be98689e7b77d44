"""Probe 18: where trace-only time goes at SD3-medium (issue 18's 5% bar).

The whole-model benchmark measured trace-only (k=0, path none, tracer on) at 1.44x the
stock forward eager and 1.41x graphed, against 1.18x for a sink k=1 forward, whose mass
pass is the same. Prediction: the tracer's own torch ops (topk, sums, xlogy, the sampled
query statistics, one cat per call) are ~15 small kernels per call, a few us of GPU each:
~2-4 ms per forward on the GPU, the rest host time. This runs the SD3-medium-sized
transformer's forward under torch.profiler in three modes (stock, mass only through the
processor without a tracer, trace-only) and prints the CUDA time per kernel name, so the
difference between the last two is the tracer's GPU time.

    python benchmarks/probes/probe18.py --out DIR
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import whole_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from sinkattn.processors import SinkSuppressProcessor
    from sinkattn.tracing import SinkTracer

    device, dtype = torch.device("cuda"), torch.bfloat16
    model, inputs, stock = whole_model.sd3_medium(device, dtype, tiny=False)
    modes = {"stock": lambda: stock,
             "mass_only": lambda: SinkSuppressProcessor(k=0, path="none"),
             "trace_only": lambda: SinkSuppressProcessor(k=0, tracer=SinkTracer()),
             "trace_no_query_stats": lambda: SinkSuppressProcessor(k=0, tracer=SinkTracer(query_sample=0))}
    report = {}
    for name, make in modes.items():
        model.set_attn_processor(make())
        with torch.no_grad():
            for _ in range(3):
                model(**inputs, return_dict=False)
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                model(**inputs, return_dict=False)
            stop.record()
            torch.cuda.synchronize()
            wall = start.elapsed_time(stop) / 5
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(**inputs, return_dict=False)
                torch.cuda.synchronize()
        events = prof.key_averages()
        rows = sorted(((e.key, e.device_time_total / 1e3, e.count) for e in events if e.device_time_total > 0),
                      key=lambda r: -r[1])
        total = sum(r[1] for r in rows)
        report[name] = {"forward_ms": wall, "gpu_ms": total, "kernels": rows[:25]}
        print(f"== {name}: forward {wall:.2f} ms (CUDA events, mean of 5), kernel time {total:.2f} ms")
        for key, ms, count in rows[:25]:
            print(f"   {ms:8.3f} ms  x{count:4d}  {key[:110]}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe18.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
