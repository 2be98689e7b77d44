"""Session-3 probe 7: the masked pass after its [BM, BN] weighting was confined to the key
tiles that hold a selected key (kernels/attention.py). SD3-medium shape: the masked route
end to end, and the flagged-row pass through the launcher with 0, 1 and ~1% of the rows
flagged (probe4's last lines measured the same before the change: 60, 191, 2091 us).

    cd benchmarks && python3 probes/probe7.py | tee probes/probe7.txt
"""
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import diffusers_layout  # noqa: E402

from sinkattn import launch, ops, sink_attention  # noqa: E402

B, H, N, D = 2, 24, 4429, 64
q, k, v = diffusers_layout(B, H, N, N, D)


def bench(fn):
    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
print(f"cuDNN SDPA {cudnn:.4f} ms", flush=True)
for route in ("masked", "correction"):
    ops.INTERVENTION_ROUTE = route
    for path in ("score", "value"):
        ms = bench(lambda: sink_attention(q, k, v, top_k=1, path=path))
        print(f"sink_{path} {route} route: {ms:.4f} ms ({ms / cudnn:.2f}x)", flush=True)
ops.INTERVENTION_ROUTE = "correction"

out = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
sinks = torch.zeros(B, H, 1, device="cuda", dtype=torch.int64)
for share in (0.0, 1 / (B * H * N), 0.01):
    flags = (torch.rand(B, H, N, device="cuda") < share).to(torch.int8)
    if share and not flags.any():
        flags[0, 0, N // 2] = 1
    ms = bench(lambda: launch.attention(q, k, v, D ** -0.5, torch.bfloat16, sinks=sinks, row_flags=flags, out=out))
    print(f"launch.attention flagged pass, {int(flags.sum())} rows flagged: {ms * 1e3:.1f} us", flush=True)
