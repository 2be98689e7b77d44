"""Probe 21: what tracing adds to an eager SD3-medium forward, interleaved (issue 18).

whole_model.py times each mode in its own block of 10 forwards; eager sink forwards are
host-bound and their medians moved 62-69 ms (sink k=1) and 67-86 ms (with the tracer) within
one run (session 10), so the eager "tracing adds" figure carried that drift. This builds the
SD3-medium-sized transformer once, then alternates sink k=1 and sink k=1 with a SinkTracer
in blocks of 3 forwards, 8 times, and reports each mode's median forward (CUDA events), and
each mode's host time per forward: the wall clock of a forward issued behind a 200 ms GPU
sleep (nothing waits on the GPU, so it is the host's own work).

    python3 benchmarks/probes/probe21.py --out DIR
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import whole_model  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    from sinkattn.processors import SinkSuppressProcessor
    from sinkattn.tracing import SinkTracer

    model, inputs, _ = whole_model.sd3_medium(torch.device("cuda"), torch.bfloat16, tiny=False)
    tracer = SinkTracer()
    processors = {"sink_score": SinkSuppressProcessor(k=1), "sink_traced": SinkSuppressProcessor(k=1, tracer=tracer)}
    times = {m: [] for m in processors}
    host = {m: [] for m in processors}

    def forward():
        with torch.no_grad():
            model(**inputs, return_dict=False)

    for block in range(args.blocks + 1):
        for mode, proc in processors.items():
            model.set_attn_processor(proc)
            tracer.flush()
            for _ in range(3):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward()
                stop.record()
                stop.synchronize()
                if block:  # block 0 warms up
                    times[mode].append(start.elapsed_time(stop))
            torch.cuda._sleep(int(200e-3 * 1.98e9))  # ~200 ms at the H200's clock
            t0 = time.perf_counter()
            forward()
            if block:
                host[mode].append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize()
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "median_ms": {m: statistics.median(t) for m, t in times.items()},
              "host_ms_per_forward": {m: statistics.median(t) for m, t in host.items()},
              "times_ms": times, "host_ms": host}
    med, hst = result["median_ms"], result["host_ms_per_forward"]
    lines = [f"{m:12s} forward median {med[m]:7.2f} ms   host per forward {hst[m]:7.2f} ms" for m in processors]
    lines.append(f"tracing adds {100 * (med['sink_traced'] / med['sink_score'] - 1):.1f}% eager (interleaved); "
                 f"host +{hst['sink_traced'] - hst['sink_score']:.2f} ms per forward "
                 f"({1000 * (hst['sink_traced'] - hst['sink_score']) / 24:.0f} us per call)")
    print("\n".join(lines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe21.json").write_text(json.dumps(result, indent=1))
    (Path(args.out) / "probe21.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
