"""Probe 22: the warp-specialised Gluon forward (kernels/attention_hopper.py, issue 19)
against cuDNN and the Triton forward, per config, on the H200.

Small cases first (one key tile, a partial second, cross-attention, a contiguous layout,
float32 output), each checked against SDPA (max abs error of O) and a float32 logsumexp
(max abs error of lse2, log2 units); then for Flux (bfloat16, diffusers' strided layout),
each (BLOCK_N, STAGES, PINGPONG) config is checked the same way and timed with do_bench
(median) through ``launch.attention`` beside the Triton forward (``hopper_forward=False``)
and cuDNN SDPA; ratios are to cuDNN. Lines are appended to probe22.txt as they come, so a
kernel that hangs leaves the lines before it.
Runs 1 and 2 (commits a87d734, 3d8b6c2; probe22_run1.*, probe22_run2.*) also timed head dim 64
(SD3-medium, SD3.5-large, SDXL self) with two and three consumer warpgroups: the Triton
forward stayed as fast or faster there, so launch runs this kernel at head dim 128 only.

    timeout 300 python3 benchmarks/probes/probe22.py --out DIR     # on the H200
"""

import json
import traceback

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from probe_tools import ProbeLog, arguments, bench, diffusers_inputs, forward_errors, reference_lse2
from sinkattn import launch, settings

SHAPES = {"flux_1024": (1, 24, 4608, 128)}  # head dim 128: where launch runs the Gluon forward
# (BLOCK_N, STAGES, PINGPONG) per head dim; the first is attention_hopper.CONFIGS' with ping-pong.
CONFIGS = {128: [(128, 2, True), (128, 2, False), (64, 4, True)]}
# Correctness only: (B, H, Nq, Nk): one key tile, a partial second, odd tails, cross-attention.
SMALL = [(1, 2, 100, 100), (1, 2, 130, 130), (2, 3, 257, 257), (1, 1, 4096, 4096), (2, 3, 300, 77), (1, 2, 1, 333)]


def _forward(q, k, v, scale, out_dtype=None, config=None, hopper=True):
    forced = {"hopper_forward": dict(zip(("BLOCK_N", "STAGES", "PINGPONG"), config))} if config else {}
    with settings.override(hopper_forward=hopper, kernel_configs=forced):
        fits = launch.hopper_forward_fits(q, k, v, scale, settings.current())
        assert fits == hopper, "the call did not take the forward asked for"
        return launch.attention(q, k, v, scale, out_dtype=out_dtype or q.dtype)


def _check(q, k, v, scale, ref=None, ref_lse=None, **kw):
    out, lse = _forward(q, k, v, scale, **kw)
    torch.cuda.synchronize()
    return forward_errors(out, lse, q, k, v, scale, ref, ref_lse)


def main():
    args = arguments(("--shapes", ",".join(SHAPES)), compile_only=False)
    say = ProbeLog(args.out, "probe22")
    result = {"small": [], "shapes": {}}
    for dim, config in ((128, None),):
        for batch, heads, n_q, n_k in SMALL:
            name = f"small B{batch} H{heads} Nq{n_q} Nk{n_k} D{dim} {config or 'default'}"
            try:
                q, k, v = diffusers_inputs(batch, heads, n_q, n_k, dim, seed=n_q)
                row = {"case": name, **_check(q, k, v, dim ** -0.5, config=config)}
                row["contiguous"] = _check(q.contiguous(), k.contiguous(), v.contiguous(), dim ** -0.5, config=config)
                row["float32_out"] = _check(q, k, v, dim ** -0.5, out_dtype=torch.float32, config=config)
            except Exception as error:  # noqa: BLE001
                row = {"case": name, "error": f"{type(error).__name__}: {error}"[-2000:]}
                traceback.print_exc()
            result["small"].append(row)
            say(json.dumps(row))

    for shape in args.shapes.split(","):
        batch, heads, n, dim = SHAPES[shape]
        scale = dim ** -0.5
        q, k, v = diffusers_inputs(batch, heads, n, n, dim)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            t_cudnn = bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))
        ref = F.scaled_dot_product_attention(q, k, v, scale=scale)
        ref_lse = reference_lse2(q, k, scale)
        triton_row = _check(q, k, v, scale, ref, ref_lse, hopper=False)
        t_triton = bench(lambda: _forward(q, k, v, scale, hopper=False))
        flops = 4 * batch * heads * n * n * dim
        entry = {"cudnn_ms": t_cudnn, "triton_ms": t_triton, "triton_ratio": t_triton / t_cudnn, **triton_row,
                 "configs": []}
        say(f"{shape}: cudnn {t_cudnn:.4f} ms ({flops / t_cudnn / 1e9:.0f} TFLOP/s), "
            f"triton forward {t_triton:.4f} ms ({t_triton / t_cudnn:.3f}x), max err {triton_row['max_err']:.2e}, "
            f"lse err {triton_row['lse_max_err']:.2e}")
        for config in CONFIGS[dim]:
            name = f"gluon BN{config[0]} stages{config[1]} {'pingpong' if config[2] else 'no-pingpong'}"
            try:
                row = {"config": name, **_check(q, k, v, scale, ref, ref_lse, config=config)}
                row["ms"] = bench(lambda: _forward(q, k, v, scale, config=config))
                row["ratio"] = row["ms"] / t_cudnn
                say(f"{shape} {name}: {row['ms']:.4f} ms ({row['ratio']:.3f}x cudnn, "
                    f"{flops / row['ms'] / 1e9:.0f} TFLOP/s), max err {row['max_err']:.2e}, "
                    f"lse err {row['lse_max_err']:.2e}")
            except Exception as error:  # noqa: BLE001 - reported per config
                row = {"config": name, "error": f"{type(error).__name__}: {error}"[-2000:]}
                say(f"{shape} {name}: FAILED {row['error'][-500:]}")
                traceback.print_exc()
            entry["configs"].append(row)
        result["shapes"][shape] = entry
        say.save(result)


if __name__ == "__main__":
    main()
