"""Session-5 probe 12: is the key-mass pass bound by re-reading Q from L2?

The shipped pass computes K Q^T with the key tile as the MMA's M side (BN 64 keys) and the
queries as N (BM 128): every program reads all of its head's Q, so Q crosses L2 N/64 times
per head (1.9 GB at SD3, 6.8 TB/s at the 0.28 ms its product loop takes alone, about what
an H100/H200 L2 delivers). The same scores as Q K^T with queries as M (BM 64, one
warpgroup's rows) and keys as N (BN 128) hold the same [64 x 128] fp32 tile per warpgroup
and read Q half as often; the lse is then per row (2 loads per thread per tile instead of
32 columns). Prediction: if L2 bandwidth bounds the loop, dot_only drops from 0.28 toward
0.15-0.2 ms and the full pass from 0.38 toward 0.30 ms.

Not timed: packed half-precision ex2 (ex2.approx.f16x2). ptxas for sm_90 splits it into
two MUFU.EX2.F16 per pair (SASS, triton 3.8), so it cannot raise the exponential rate there.

    cd benchmarks && python3 probes/probe12.py | tee probes/probe12.txt
"""
import math
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from mass_floor import mass_phases_kernel  # noqa: E402
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import launch  # noqa: E402


@triton.jit
def rows_form_kernel(Q, K, LSE, MASS, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     H, N_Q, N_K, qk_scale,
                     D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     DOT: tl.constexpr, EXP: tl.constexpr):
    """Q K^T [BM, BN] per query tile, P = exp2(S * scale - lse_row), a 2-D accumulator
    summed over the queries once at the end. Full query tiles only (like mass_floor)."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += (bh // H) * stride_qb + (bh % H) * stride_qh
    K += (bh // H) * stride_kb + (bh % H) * stride_kh
    LSE += bh * N_Q
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    b_k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=offs_n[:, None] < N_K, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for start_m in range(0, (N_Q // BLOCK_M) * BLOCK_M, BLOCK_M):
        rows = start_m + offs_m
        b_lse = tl.load(LSE + rows)
        if DOT:
            b_q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :])
            b_s = tl.dot(b_q, tl.trans(b_k))
        else:
            b_s = (rows[:, None] - offs_n[None, :]).to(tl.float32)
        x = b_s * qk_scale - b_lse[:, None]
        if EXP:
            x = tl.math.exp2(x)
        acc += x
    tl.store(MASS + bh * N_K + offs_n, tl.sum(acc, 0), mask=offs_n < N_K)


def bench(fn):
    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def main():
    for shape in ("sd3m_1024", "flux_1024", "sdxl_self_64x64", "sd35l_1024"):
        B, H, N, _, D = SHAPES[shape]
        q, k, v = diffusers_layout(B, H, N, N, D)
        scale = D ** -0.5
        _, lse = launch.attention(q, k, v, scale, torch.bfloat16)
        shipped = launch.key_mass(q, k, lse, scale, (0, N)) * N  # summed, not averaged
        ms = bench(lambda: launch.key_mass(q, k, lse, scale, (0, N)))
        print(f"{shape} shipped key_mass (launcher, all rows): {ms:.4f} ms", flush=True)
        same_tiles = {}
        tiles = [("cols", 128, 64, 4, 3), ("rows", 64, 128, 4, 3), ("rows", 64, 128, 4, 4),
                 ("rows", 64, 128, 4, 2), ("rows", 64, 64, 4, 3), ("rows", 128, 128, 8, 3),
                 ("rows", 64, 256, 8, 3), ("rows", 128, 64, 4, 3)]
        if D == 128:
            tiles = [("cols", 128, 64, 4, 3), ("cols", 64, 64, 4, 3), ("rows", 64, 128, 4, 3),
                     ("rows", 64, 128, 4, 2), ("rows", 64, 64, 4, 3), ("rows", 128, 128, 8, 3),
                     ("rows", 128, 64, 4, 2)]
        variants = [("full", True, True), ("dot_only", True, False)] if shape == "sd3m_1024" else [("full", True, True)]
        for form, bm, bn, warps, stages in tiles:
            for name, dot, exp in variants:
                mass = torch.zeros(B, H, N, device="cuda", dtype=torch.float32)

                def run():
                    args = (q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                            k.stride(2), H, N, N, scale / math.log(2))
                    if form == "cols":
                        mass_phases_kernel[(triton.cdiv(N, bn), B * H)](
                            *args, D=D, BLOCK_M=bm, BLOCK_N=bn, DOT=dot, EXP=exp,
                            num_warps=warps, num_stages=stages)
                    else:
                        rows_form_kernel[(triton.cdiv(N, bn), B * H)](
                            *args, D=D, BLOCK_M=bm, BLOCK_N=bn, DOT=dot, EXP=exp,
                            num_warps=warps, num_stages=stages)
                try:
                    t = bench(run)
                except Exception as e:  # out of resources: report and go on
                    print(f"{shape} {form} BM{bm} BN{bn} w{warps} s{stages} {name}: failed {type(e).__name__}: {e}"[:300])
                    continue
                err = ""
                if exp:
                    # The first kernel over the same full query tiles is the reference.
                    ref = same_tiles.setdefault(bm, mass.clone())
                    err = f"  rel err vs the first BM{bm} kernel {((mass - ref).norm() / ref.norm()).item():.2e}"
                    if N % bm == 0:
                        err += f", vs shipped {((mass - shipped).norm() / shipped.norm()).item():.2e}"
                print(f"{shape} {form} BM{bm} BN{bn} w{warps} s{stages} {name}: {t:.4f} ms{err}", flush=True)


if __name__ == "__main__":
    main()
