"""Probe 19 (Nsight Compute part): what limits the plain forward and cuDNN's on the H200.

Runs cuDNN SDPA, the Triton forward (``sinkattn.launch.attention`` with the Gluon forward
off) and the Gluon forward (``launch._hopper_attention``, forced at D64 too, where launch
does not run it: kernels/NOTES.md, session 11) twice each at SD3-medium (D64) and Flux
(D128) on the same seeded tensors, for Nsight Compute to profile (the second launch of each
is the one to read; the first compiles or warms up). Session 9 ran it before the Gluon
forward existed (probe19_ncu.csv); the Gluon rows are for issue 19's next step.

    ncu --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis \\
        --section WarpStateStats --section Occupancy --section LaunchStats \\
        --metrics sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,\\
sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,\\
sm__cycles_elapsed.avg.per_second,smsp__issue_active.avg.pct_of_peak_sustained_active \\
        -k regex:'fprop|attention_forward|hopper_attention' --csv --page details python3 benchmarks/probes/probe19_ncu.py
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sinkattn import launch, settings  # noqa: E402

SHAPES = {"sd3m_1024": (2, 24, 4429, 64), "flux_1024": (1, 24, 4608, 128)}
GLUON = {64: {"BLOCK_N": 128, "STAGES": 4}, 128: {"BLOCK_N": 128, "STAGES": 2}}  # probe22's best per head dim

for name, (B, H, N, D) in SHAPES.items():
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16).view(B, N, H, D).transpose(1, 2)
               for _ in range(3))
    for _ in range(2):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(q, k, v)
        with settings.override(hopper_forward=False):
            launch.attention(q, k, v, D ** -0.5, torch.bfloat16)
        with settings.override(kernel_configs={"hopper_forward": GLUON[D]}) as forced:
            out = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
            lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
            launch._hopper_attention(q, k, v, D ** -0.5, out, lse, None, forced)
    torch.cuda.synchronize()
    print(name, "done", flush=True)
