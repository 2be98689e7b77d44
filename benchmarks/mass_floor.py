"""What bounds the key-mass pass, and with it the mass and sink bars: each kernel's time
set against its exponentials at the MUFU rate and its products at the tensor-core peak, at
the SM clock the card actually ran while it was timed, with the power it drew.

    python benchmarks/mass_floor.py [--out benchmarks/results/mass_floor_h200.json]

Per shape (SD3-medium, Flux, SDXL self; bf16, diffusers' layout) it times cuDNN SDPA, the
sinkattn forward and the shipped key-mass pass, then runs each back to back for 1.5 s while
nvidia-smi samples the SM clock and the power draw every 50 ms. At SD3 it also times variants
of one diagnostic key-mass kernel (full query tiles only):
  full        K Q^T on the tensor cores, exp2 on the MUFU unit (what key_mass_kernel does)
  dot_only    K Q^T, no exponentials (the scores themselves are summed)
  exp_only    no Q and no K Q^T: scores synthesised from the indices (an integer add and a
              convert per element), exponentials kept
  synth_only  the same synthesised scores without the exponentials

For every row: clocks per SM = time x measured clock; exp clocks = exponentials / 16 per
clock per SM (MUFU ex2, CUDA programming guide, compute capability 9.0); tensor clocks =
FLOP / 4096 per clock per SM (dense bf16 on an SXM Hopper: 989 TFLOP/s over 132 SMs at
1.83 GHz). If a kernel's clocks are near exp + tensor clocks, its exponentials and products
did not overlap; below that sum, they did.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from sinkattn import launch
from run import SHAPES, diffusers_layout  # benchmarks/run.py
from run import meta as run_meta


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
TILE = (128, 64, 4, 3)  # (BLOCK_M, BLOCK_N, warps, stages) of the diagnostic kernel
SHAPE_NAMES = ("sd3m_1024", "flux_1024", "sdxl_self_64x64")  # run.py's SHAPES, its seeded inputs
MUFU_EXP2_PER_CLOCK = 16
TENSOR_FLOP_PER_CLOCK = 4096
SAMPLE_MS = 50


class PowerSampler:
    """nvidia-smi's SM clock (MHz) and power draw (W) every SAMPLE_MS, with host timestamps."""

    def __init__(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                 "-lms", str(SAMPLE_MS)], stdout=subprocess.PIPE, text=True)
        except OSError:
            self.proc = None
        self.samples: list[tuple[float, float, float]] = []
        if self.proc is not None:
            self.reader = threading.Thread(target=self._read, daemon=True)
            self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                clock, power = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), clock, power))

    def window(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        inside = [(c, p) for t, c, p in self.samples if t0 <= t <= t1]
        if not inside:
            return None, None
        return statistics.median(c for c, _ in inside), statistics.median(p for _, p in inside)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()


def measure(fn, sampler: PowerSampler, seconds: float = 1.5) -> dict:
    fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    start = time.monotonic()
    for _ in range(max(1, int(seconds * 1e3 / ms))):
        fn()
    torch.cuda.synchronize()
    # The first samples of a window still see the previous kernel's clock.
    clock, power = sampler.window(start + 0.3, time.monotonic())
    time.sleep(0.3)
    return {"ms": ms, "clock_mhz": clock, "power_w": power}


def account(row: dict, exps: float, flops: float, sms: int) -> dict:
    row["exp_kclocks"] = exps / MUFU_EXP2_PER_CLOCK / sms / 1e3
    row["tensor_kclocks"] = flops / TENSOR_FLOP_PER_CLOCK / sms / 1e3
    row["kclocks"] = row["ms"] * row["clock_mhz"] if row["clock_mhz"] else None
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mass_floor_h200.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/mass_floor.py needs a CUDA device")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sampler = PowerSampler()
    rows = []
    try:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
            for shape in SHAPE_NAMES:
                B, H, N, _, D = SHAPES[shape]
                q, k, v = diffusers_layout(B, H, N, N, D)
                scale = D ** -0.5
                _, lse = launch.attention(q, k, v, scale, torch.bfloat16)
                scores = B * H * N * N
                kernels = {
                    "cudnn_sdpa": (lambda: F.scaled_dot_product_attention(q, k, v), scores, 4 * scores * D),
                    "forward": (lambda: launch.attention(q, k, v, scale, torch.bfloat16), scores, 4 * scores * D),
                    "key_mass": (lambda: launch.key_mass(q, k, lse, scale, (0, N)), scores, 2 * scores * D),
                }
                if shape == "sd3m_1024":
                    mass = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
                    bm, bn, warps, stages = TILE
                    covered = B * H * (N // bm * bm) * N
                    for name, (dot, exp) in VARIANTS.items():
                        def run(dot=dot, exp=exp):
                            mass_phases_kernel[(triton.cdiv(N, bn), B * H)](
                                q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                                k.stride(2), H, N, N, scale / math.log(2), D=D, BLOCK_M=bm, BLOCK_N=bn, DOT=dot,
                                EXP=exp, num_warps=warps, num_stages=stages)
                        kernels[f"diagnostic_{name}"] = (run, covered if exp else 0, 2 * covered * D if dot else 0)
                for name, (fn, exps, flops) in kernels.items():
                    row = account({"shape": shape, "kernel": name, **measure(fn, sampler)}, exps, flops, sms)
                    rows.append(row)
                    print(f"{shape:16s} {name:22s} {row['ms']:.4f} ms  {row['clock_mhz']} MHz  {row['power_w']} W  "
                          f"{_fmt(row['kclocks'])} kclk against exp {row['exp_kclocks']:.0f} + tensor "
                          f"{row['tensor_kclocks']:.0f}", flush=True)
    finally:
        sampler.stop()
    meta = {**run_meta(), "sms": sms, "max_clock_ghz": _max_sm_clock_ghz(),
            "mufu_exp2_per_clock": MUFU_EXP2_PER_CLOCK, "tensor_flop_per_clock": TENSOR_FLOP_PER_CLOCK,
            "diagnostic_tile": "BM{} BN{} w{} s{}".format(*TILE)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


def _max_sm_clock_ghz() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout.split()[0]
        return float(out) / 1e3
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def _fmt(x):
    return "—" if x is None else f"{x:.0f}"


if __name__ == "__main__":
    main()
