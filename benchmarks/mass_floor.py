"""What bounds the key-mass pass: the same loop with its tensor-core work or its
exponentials taken out, timed on the SD3-medium shape (B2 H24 N4429 D64, bf16).

    python benchmarks/mass_floor.py [--out benchmarks/results/mass_floor_h200.json]

Variants of one diagnostic kernel, each over the full query tiles of every key tile:
  full        K Q^T on the tensor cores, exp2 on the MUFU unit (what key_mass_kernel does)
  dot_only    K Q^T, no exponentials (the scores themselves are summed)
  exp_only    no Q and no K Q^T: scores synthesised from the indices (an integer add and a
              convert per element), exponentials kept
  synth_only  the same synthesised scores without the exponentials
exp_only - synth_only is what the exponentials cost alone. If full ~ dot_only +
(exp_only - synth_only), the tensor cores and the exp unit do not overlap; if full is
close to dot_only, the loop around the products is the bound.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from sinkattn import launch


@triton.jit
def mass_phases_kernel(Q, K, LSE, MASS, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                       H, N_Q, N_K, qk_scale,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       DOT: tl.constexpr, EXP: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    Q += (bh // H) * stride_qb + (bh % H) * stride_qh
    K += (bh // H) * stride_kb + (bh % H) * stride_kh
    LSE += bh * N_Q
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    b_k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=offs_n[:, None] < N_K, other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for start_m in range(0, (N_Q // BLOCK_M) * BLOCK_M, BLOCK_M):
        rows = start_m + offs_m
        b_lse = tl.load(LSE + rows)
        if DOT:
            b_q = tl.load(Q + rows[:, None] * stride_qm + offs_d[None, :])
            b_s = tl.dot(b_k, tl.trans(b_q))
        else:
            b_s = (offs_n[:, None] - rows[None, :]).to(tl.float32)
        x = b_s * qk_scale - b_lse[None, :]
        if EXP:
            x = tl.math.exp2(x)
        acc += x
    tl.store(MASS + bh * N_K + offs_n, tl.sum(acc, 1), mask=offs_n < N_K)


VARIANTS = {"full": (True, True), "dot_only": (True, False), "exp_only": (False, True), "synth_only": (False, False)}
TILES = [(32, 128, 4, 3), (128, 64, 4, 3)]  # (BLOCK_M, BLOCK_N, warps, stages): the two best key-mass configs


def _max_sm_clock_ghz() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout.split()[0]
        return float(out) / 1e3
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mass_floor_h200.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/mass_floor.py needs a CUDA device")
    B, H, N, D = 2, 24, 4429, 64
    q = torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16).view(B, N, H, D).transpose(1, 2)
    k = torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16).view(B, N, H, D).transpose(1, 2)
    _, lse = launch.attention(q, k, k, D**-0.5, torch.bfloat16)
    mass = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    scores = B * H * (N // 128 * 128) * N
    rows = []
    for bm, bn, warps, stages in TILES:
        for name, (dot, exp) in VARIANTS.items():
            def run():
                mass_phases_kernel[(triton.cdiv(N, bn), B * H)](
                    q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    H, N, N, D**-0.5 / math.log(2), D=D, BLOCK_M=bm, BLOCK_N=bn, DOT=dot, EXP=exp,
                    num_warps=warps, num_stages=stages)
            run()
            ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
            rows.append({"tile": f"BM{bm} BN{bn} w{warps} s{stages}", "variant": name, "ms": ms,
                         "exp_per_clock_per_sm": None})
            print(f"{rows[-1]['tile']:22s} {name:10s} {ms:.4f} ms", flush=True)
    clock_ghz = _max_sm_clock_ghz()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for r in rows:
        if clock_ghz and r["variant"] in ("full", "exp_only"):
            r["exp_per_clock_per_sm"] = scores / (r["ms"] * 1e-3) / sms / (clock_ghz * 1e9)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "shape": [B, H, N, N, D], "scores": scores, "sms": sms, "max_clock_ghz": clock_ghz,
            "note": "exp_per_clock_per_sm at the maximum SM clock; the MUFU unit does 16"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
