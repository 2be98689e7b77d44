"""Probe 26 (Nsight Compute): what bounds the key-mass pass on the H200. Prepared in session
12, not yet run (no device time left).

Session 12 measured every variant of the pass at 0.31 ms at Flux: the Triton pass
(autotuned) and the warp-specialised Gluon pass (gluon_key_mass_ws.py) with its lse2 loaded
ahead, with ping-pong between its consumers and with its K tile in registers (probe23 runs
2-4), 1.15x the pass's exponentials-plus-products time at peak rates. This launches the
Triton pass and the Gluon pass (stages 4, K in registers) twice each at SD3-medium and Flux
on the same seeded tensors; read the second launch of each.

    ncu --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis \\
        --section WarpStateStats --section Occupancy --section LaunchStats --section SchedulerStats \\
        --metrics sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,\\
smsp__issue_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,\\
sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active \\
        -k regex:'key_mass' --csv --page details python3 benchmarks/probes/probe26_ncu.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probes/
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from probe_tools import diffusers_inputs  # noqa: E402

from sinkattn import launch, settings  # noqa: E402

SHAPES = {"sd3m_1024": (2, 24, 4429, 64), "flux_1024": (1, 24, 4608, 128)}
# The configs the autotuner chose for the Triton pass in session 12's run.py run
# (results/h200_session12.json, meta.configs), forced so that no autotuning launch is profiled.
TRITON_KEY_MASS = {64: dict(BLOCK_M=32, BLOCK_N=64, PAIRED=True, num_warps=4, num_stages=3),
                   128: dict(BLOCK_M=64, BLOCK_N=128, PAIRED=False, num_warps=4, num_stages=3)}


def main():
    import gluon_key_mass_ws as gk

    for name, (batch, heads, n, dim) in SHAPES.items():
        q, k, v = diffusers_inputs(batch, heads, n, n, dim)
        scale, rows = dim ** -0.5, (0, n)
        _, lse = launch.attention(q, k, v, scale, out_dtype=q.dtype)
        run, _ = gk.prepare(q, k, lse, scale, rows, 64, 4, False, True)
        for _ in range(2):
            with settings.override(kernel_configs={"key_mass": TRITON_KEY_MASS[dim]}):
                launch.key_mass(q, k, lse, scale, rows)
            run()
        torch.cuda.synchronize()
        print(name, "done", flush=True)


if __name__ == "__main__":
    main()
