"""Session-4 probe 9: how many rows the correction flags on run.py's seeded draws (the
flagged-row pass then recomputes their tiles), per benchmark shape and path, top-1 sink.

    cd benchmarks && python3 probes/probe9.py | tee probes/probe9.txt
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import launch  # noqa: E402

for name, (B, H, NQ, NK, D) in SHAPES.items():
    q, k, v = diffusers_layout(B, H, NQ, NK, D)
    s = D ** -0.5
    out32, lse = launch.attention(q, k, v, s, torch.float32)
    mass = launch.key_mass(q, k, lse, s, (0, NQ))
    sinks = launch.top1(mass, (0, NK), True)
    for path in ("score", "value"):
        _, flags = launch.correct(q, k, v, out32, lse, sinks, 0.0, path, (0, NQ), s, q.dtype, may_repeat=False)
        print(f"{name} {path}: {int(flags.sum())} of {flags.numel()} rows flagged", flush=True)
