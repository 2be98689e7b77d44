"""Session-4 probe 11: GPU time per kernel (torch.profiler) of the flagged-tile pass with 1
and 2 flagged tiles at the SD3 shape, key-split and whole, to separate it from the
launcher's host time that probe10's do_bench figures are bound by at this size.

    cd benchmarks && python3 probes/probe11.py | tee probes/probe11.txt
"""
import os
import sys

import torch
import triton
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import launch  # noqa: E402
from sinkattn.kernels import configs  # noqa: E402

B, H, N, _, D = SHAPES["sd3m_1024"]
q, k, v = diffusers_layout(B, H, N, N, D)
sinks = torch.zeros(B, H, 1, device="cuda", dtype=torch.int64)
bm = configs.CORRECTION_BLOCK_M
n_tiles = triton.cdiv(N, bm)
out = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
for tiles in ([(0, 34)], [(0, 34), (31, 50)], [(31, 50)]):
    slots = torch.full((B * H, n_tiles), -1, dtype=torch.int32, device="cuda")
    for i, (bh, t) in enumerate(tiles):
        slots[bh, t] = i
    count = torch.tensor([len(tiles)], dtype=torch.int32, device="cuda")
    for mode, max_tiles in (("split", 64), ("whole", 0)):
        configs.FLAGGED_MAX_SPLIT_TILES = max_tiles
        for _ in range(3):
            launch.recompute_flagged(q, k, v, D ** -0.5, sinks, 0.0, "score", (0, N), slots, count, out)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                launch.recompute_flagged(q, k, v, D ** -0.5, sinks, 0.0, "score", (0, N), slots, count, out)
            torch.cuda.synchronize()
        times = {}
        for e in prof.events():
            if e.device_type.name == "CUDA":
                name = e.name.split("(")[0][:40]
                times.setdefault(name, []).append(e.device_time)
        summary = ", ".join(f"{n}: {sum(t) / len(t):.1f} us x{len(t)}" for n, t in times.items())
        print(f"tiles {tiles} {mode}: {summary}", flush=True)
configs.FLAGGED_MAX_SPLIT_TILES = 64
