"""Session-5 probe 13: the Gluon key-mass pass (gluon_key_mass.py: the next tile's K Q^T in
flight during the current tile's exponentials) against the shipped Triton pass, on the
same tensors: time (do_bench median) and relative error of the mass against the shipped
pass. Prediction: if the products hide under the exponentials, the SD3 pass drops from
0.38 toward the exponentials' own 0.25 ms (mass_floor's exp_only).

    cd benchmarks && python3 probes/probe13.py | tee probes/probe13.txt

Run 1 (probe13_run1.txt): one warpgroup, 64 keys per program: no faster than the shipped
pass (0.391 against 0.381 ms at SD3). Probe14 then found every tensor-core kernel here at
the card's ~690 W power draw, so run 2 cuts the bytes instead: 128 or 256 keys per program
(two warpgroups sharing each Q tile) read Q from L2 half or a quarter as often.
"""
import os
import sys
import traceback

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # probes/
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import launch  # noqa: E402

print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(), flush=True)
try:
    import gluon_key_mass
except Exception:  # the Gluon API of this Triton differs: show where
    traceback.print_exc()
    sys.exit(1)


def bench(fn):
    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


# (BLOCK_M, STAGES, BLOCK_N, num_warps). Run 1 (probe13_run1.txt) had BLOCK_N 64, 4 warps only.
CONFIGS = {64: [(64, 4, 64, 4), (64, 4, 128, 8), (64, 3, 128, 8), (64, 6, 128, 8), (128, 3, 128, 8), (64, 4, 128, 4),
                (64, 3, 256, 8), (64, 4, 256, 8)],
           128: [(64, 4, 64, 4), (64, 3, 64, 4), (64, 4, 128, 8), (64, 3, 128, 8), (64, 3, 128, 4)]}
first_error = True
for shape in ("sd3m_1024", "sd35l_1024", "flux_1024", "sdxl_self_64x64"):
    B, H, N, _, D = SHAPES[shape]
    q, k, v = diffusers_layout(B, H, N, N, D)
    scale = D ** -0.5
    _, lse = launch.attention(q, k, v, scale, torch.bfloat16)
    shipped = launch.key_mass(q, k, lse, scale, (0, N))
    t = bench(lambda: launch.key_mass(q, k, lse, scale, (0, N)))
    print(f"{shape} shipped: {t:.4f} ms", flush=True)
    for block_m, stages, block_n, warps in CONFIGS[D]:
        name = f"BM{block_m} stages {stages} BN{block_n} w{warps}"
        try:
            mass = gluon_key_mass.key_mass(q, k, lse, scale, block_m, stages, block_n, warps)
            torch.cuda.synchronize()
            err = ((mass - shipped).norm() / shipped.norm()).item()
            t = bench(lambda: gluon_key_mass.key_mass(q, k, lse, scale, block_m, stages, block_n, warps))
            print(f"{shape} gluon {name}: {t:.4f} ms, rel err vs shipped {err:.2e}, "
                  f"max abs {(mass - shipped).abs().max().item():.2e}", flush=True)
        except Exception as e:
            print(f"{shape} gluon {name}: failed {type(e).__name__}", flush=True)
            if first_error:
                traceback.print_exc()
                first_error = False
