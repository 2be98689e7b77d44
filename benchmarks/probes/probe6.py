"""Session-3 probe 6: where the host time of a call goes. SDXL self-attention calls are
host-bound on the device machine (probe5: sink_score do_bench 0.815 ms against 0.377 ms of
GPU time), and so is the SD3-medium-sized forward (28.9 ms of kernels, 51.5 ms per forward).
Host time per call by mode with the GPU kept busy, then cProfile of the sink_score call.

    cd benchmarks && python3 probes/probe6.py | tee probes/probe6.txt
"""
import cProfile
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import diffusers_layout  # noqa: E402

from sinkattn import sink_attention  # noqa: E402

q, k, v = diffusers_layout(2, 10, 4096, 4096, 64)
MODES = {"plain": dict(top_k=0), "mass": dict(top_k=0, path="none", return_mass=True),
         "score": dict(top_k=1, path="score"), "value": dict(top_k=1, path="value")}
CALLS = 100


def host_us(fn):
    """Host time per call while the GPU is still busy with a long sleep (nothing waits)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU time queued ahead
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / CALLS * 1e6


for mode, kw in MODES.items():
    sink_attention(q, k, v, **kw)
    print(f"sdxl_self {mode}: host {host_us(lambda: sink_attention(q, k, v, **kw)):.1f} us per call", flush=True)
x = torch.empty(1, device="cuda")
print(f"one torch op (x.add_(1)): host {host_us(lambda: x.add_(1)):.1f} us", flush=True)

for mode in ("score", "mass"):
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(CALLS):
        sink_attention(q, k, v, **MODES[mode])
    profiler.disable()
    torch.cuda.synchronize()
    print(f"\n--- cProfile, {CALLS} {mode} calls, by own time ---", flush=True)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    print(f"--- by cumulative time ---", flush=True)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
