"""Session-3 probe 4: the key-mass loop over two query tiles per iteration (one of two
K Q^T products left in flight; written as benchmarks/probes/pair_key_mass.py when this ran,
now key_mass_kernel's PAIRED loop, the same code) against the one-tile loop, mass pass
alone, same tensors; relative error of both against the float64 reference
(sinkattn.reference) at SD3-medium. Then the flagged-row pass with nothing flagged.

    python3 benchmarks/probes/probe4.py | tee benchmarks/probes/probe4.txt
"""
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import diffusers_layout  # noqa: E402  (benchmarks/run.py)

from sinkattn import launch  # noqa: E402
from sinkattn.kernels.key_mass import key_mass_kernel  # noqa: E402
from sinkattn.reference import sink_attention as reference  # noqa: E402

LOG2E = launch.LOG2E
SHAPES = {"sd3m": (2, 24, 4429, 64), "sd35l": (2, 38, 4429, 64), "sdxl_self": (2, 10, 4096, 64), "flux": (1, 24, 4608, 128)}
SHIPPED = [(32, 128, 4, 3), (128, 64, 4, 3), (32, 128, 4, 4), (64, 128, 4, 3)]
PAIR = [(64, 64, 4, 3), (32, 128, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3), (64, 64, 4, 4), (32, 128, 4, 4)]


for name, (B, H, N, D) in SHAPES.items():
    q, k, _ = diffusers_layout(B, H, N, N, D)
    scale = D ** -0.5
    _, lse = launch.attention(q, k, k, scale, torch.bfloat16)
    ref = reference(q.double(), k.double(), k.double(), top_k=0, path="none", return_mass=True).mass if name == "sd3m" else None
    mass = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    for kind, paired, configs in (("shipped", False, SHIPPED), ("pair", True, PAIR)):
        for bm, bn, warps, stages in configs:
            def run():
                key_mass_kernel[(triton.cdiv(N, bn), B * H, 1)](
                    q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    H, N, N, 0, N, scale * LOG2E, 1.0 / N, D=D, BLOCK_D=D, BLOCK_M=bm, BLOCK_N=bn,
                    PAIRED=paired, DOT_PRECISION="tf32", num_warps=warps, num_stages=stages)
            try:
                run()
                ms = triton.testing.do_bench(run, warmup=25, rep=150, return_mode="median")
                err = "" if ref is None else f"  err {((mass.double() - ref).norm() / ref.norm()).item():.2e}"
                print(f"{name:10s} {kind:8s} BM{bm} BN{bn} w{warps} s{stages}: {ms:.4f} ms{err}", flush=True)
            except Exception as e:  # noqa: BLE001 - a config that cannot run is reported
                print(f"{name:10s} {kind:8s} BM{bm} BN{bn} w{warps} s{stages}: {type(e).__name__} {str(e)[:120]}", flush=True)

# The flagged-row pass of the correction route when no row is flagged (kernels/NOTES.md:
# 20-80 us at SD3 in run 5), by config, score and value path: one program per query tile
# (run 5's grid) against a few programs per head striding over its tiles (session 3).
# When this ran the kernel took a (B, H, Nk) weight tensor where it now takes the sink
# indices (the following commit); the launch arguments below are the current ones.
from sinkattn.kernels.attention import attention_forward_kernel  # noqa: E402

B, H, N, D = SHAPES["sd3m"]
q, k, v = diffusers_layout(B, H, N, N, D)
out = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
sinks = torch.zeros(B, H, 1, device="cuda", dtype=torch.int64)
flags = torch.zeros(B, H, N, device="cuda", dtype=torch.int8)
sms = torch.cuda.get_device_properties(0).multi_processor_count
for on_value in (False, True):
    for bm, bn, warps, stages in [(128, 64, 8, 4), (128, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 2)]:
        for grid_name, per_head in (("per tile", triton.cdiv(N, bm)), ("strided 2/SM", triton.cdiv(2 * sms, B * H)),
                                    ("strided 1/SM", triton.cdiv(sms, B * H))):
            def flagged_pass():
                attention_forward_kernel[(per_head, B * H)](
                    q, k, v, out, lse, sinks, flags, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                    k.stride(2), v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                    H, N, N, 0, N, D ** -0.5 * LOG2E, 1, 0.0, D=D, DV=D, BLOCK_D=D, BLOCK_DV=D, BLOCK_M=bm,
                    BLOCK_N=bn, BLOCK_T=16,
                    WEIGHT_ON_VALUE=on_value, DOT_PRECISION="tf32", num_warps=warps, num_stages=stages)
            flagged_pass()
            ms = triton.testing.do_bench(flagged_pass, warmup=25, rep=150, return_mode="median")
            print(f"flagged pass, nothing flagged, {'value' if on_value else 'score'} BM{bm} BN{bn} w{warps} s{stages} "
                  f"{grid_name}: {ms * 1e3:.1f} us", flush=True)

# The same through the launcher (the shipped grid and config), with 0, one and 1% of the rows flagged.
for share in (0.0, 1 / (B * H * N), 0.01):
    flags = (torch.rand(B, H, N, device="cuda") < share).to(torch.int8)
    if share and not flags.any():
        flags[0, 0, N // 2] = 1

    def launched():
        launch.attention(q, k, v, D ** -0.5, torch.bfloat16, sinks=sinks, row_flags=flags, out=out)
    launched()
    ms = triton.testing.do_bench(launched, warmup=25, rep=150, return_mode="median")
    print(f"launch.attention flagged pass, {int(flags.sum())} rows flagged: {ms * 1e3:.1f} us", flush=True)
