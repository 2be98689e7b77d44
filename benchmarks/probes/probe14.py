"""Session-5 probe 14: SM clock and power while each part of the mass work runs.

The Gluon key-mass pass with the next product in flight (probe13) took as long as the
shipped one (0.39 against 0.38 ms at SD3), so the synchronous products are not what holds
the pass at 0.38 ms against the exponentials' 0.225 ms at the MUFU rate and maximum clock.
This probe runs each kernel back to back for 2 s while nvidia-smi samples the SM clock and
the power draw every 50 ms, and reports the median over each window, with the time per call
and the exponentials per clock per SM at the measured clock.

    cd benchmarks && python3 probes/probe14.py | tee probes/probe14.txt
"""
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from mass_floor import mass_phases_kernel  # noqa: E402
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import launch  # noqa: E402

B, H, N, _, D = SHAPES["sd3m_1024"]
q, k, v = diffusers_layout(B, H, N, N, D)
scale = D ** -0.5
_, lse = launch.attention(q, k, v, scale, torch.bfloat16)
mass = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
sms = torch.cuda.get_device_properties(0).multi_processor_count


def phases(dot, exp):
    def run():
        mass_phases_kernel[(triton.cdiv(N, 64), B * H)](
            q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            H, N, N, scale / math.log(2), D=D, BLOCK_M=128, BLOCK_N=64, DOT=dot, EXP=exp, num_warps=4, num_stages=3)
    return run


KERNELS = {
    "key_mass (shipped)": (lambda: launch.key_mass(q, k, lse, scale, (0, N)), B * H * N * N),
    "mass_floor full BM128 BN64": (phases(True, True), B * H * (N // 128 * 128) * N),
    "mass_floor dot_only": (phases(True, False), 0),
    "mass_floor exp_only": (phases(False, True), B * H * (N // 128 * 128) * N),
    "forward (launch.attention, bf16 out)": (lambda: launch.attention(q, k, v, scale, torch.bfloat16), B * H * N * N),
    "cuDNN SDPA": (lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), B * H * N * N),
}

smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw", "--format=csv,noheader,nounits",
                        "-lms", "50"], stdout=subprocess.PIPE, text=True)
windows = {}
with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
    for name, (fn, exps) in KERNELS.items():
        fn()
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        calls = int(2000 / ms)
        start = time.time()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        windows[name] = (start + 0.3, time.time() - 0.1, ms, exps)
        time.sleep(0.5)
time.sleep(0.2)
smi.terminate()
samples = []
for line in smi.stdout.read().splitlines():
    stamp, clock, power = (x.strip() for x in line.split(","))
    t = time.mktime(time.strptime(stamp.split(".")[0], "%Y/%m/%d %H:%M:%S")) + float("0." + stamp.split(".")[1])
    samples.append((t, float(clock), float(power)))
for name, (t0, t1, ms, exps) in windows.items():
    inside = [(c, p) for t, c, p in samples if t0 <= t <= t1]
    if not inside:
        print(f"{name}: {ms:.4f} ms, no samples in the window")
        continue
    clock = statistics.median(c for c, _ in inside)
    power = statistics.median(p for _, p in inside)
    rate = f", {exps / (ms * 1e-3) / sms / (clock * 1e6):.1f} exp2 per clock per SM" if exps else ""
    print(f"{name}: {ms:.4f} ms, SM clock {clock:.0f} MHz, power {power:.0f} W ({len(inside)} samples){rate}")
