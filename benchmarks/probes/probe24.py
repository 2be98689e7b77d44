"""Probe 24: the persistent variant of the Gluon forward (gluon_forward_persistent.py, issue
19) against SDPA, and timed beside the shipped Gluon forward and cuDNN at Flux (and SD3-medium,
where launch runs the Triton forward: the Gluon kernels forced, for comparison). Written in
session 11 with no device time left: compile-checked for sm_90 only, not yet run.

    timeout 300 python3 benchmarks/probes/probe24.py --out DIR     # on the H200
    python3 benchmarks/probes/probe24.py --compile-only           # any machine: sm_90
"""

import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probes/
from probe_tools import ProbeLog, arguments, bench, compile_sm90, diffusers_inputs, forward_errors  # noqa: E402

SHAPES = {"flux_1024": (1, 24, 4608, 128), "sd3m_1024": (2, 24, 4429, 64)}
CONFIGS = {128: [(128, 2, True), (128, 2, False)], 64: [(128, 4, True), (128, 2, True)]}  # BLOCK_N, STAGES, PINGPONG
SMALL = [(1, 2, 100, 100), (2, 3, 257, 130), (1, 2, 1, 333)]  # (B, H, Nq, Nk): one key tile, tails, one row


def compile_only():
    import gluon_forward_persistent as gp
    from sinkattn import launch

    ok = True
    for dim, configs in CONFIGS.items():
        q = torch.empty(2, 100, 3 * dim, dtype=torch.bfloat16).view(2, 100, 3, dim).transpose(1, 2)
        for block_n, stages, pingpong in configs:
            descs = {"q_desc": launch._tma_descriptor(q, gp.BLOCK_M), "k_desc": launch._tma_descriptor(q, block_n),
                     "v_desc": launch._tma_descriptor(q, block_n)}
            constexprs = dict(BLOCK_N=block_n, D=dim, STAGES=stages, PINGPONG=pingpong,
                              CONSUMER_REGS_=gp.CONSUMER_REGS, PRODUCER_REGS_=gp.PRODUCER_REGS)
            name = f"D{dim} BN{block_n} stages{stages} {'pingpong' if pingpong else 'no-pingpong'}"
            ok &= compile_sm90(name, gp.persistent_attention_kernel, descs, {"O": "*bf16", "LSE": "*fp32",
                               "qk_scale": "fp32"}, constexprs, gp.MAXNREG)
    return ok


def main():
    args = arguments()
    if args.compile_only:
        sys.exit(0 if compile_only() else 1)

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import gluon_forward_persistent as gp
    from sinkattn import launch, settings

    say = ProbeLog(args.out, "probe24")
    results = {}
    for dim in (128, 64):
        for batch, heads, n_q, n_k in SMALL:
            name = f"small B{batch} H{heads} Nq{n_q} Nk{n_k} D{dim}"
            try:
                q, k, v = diffusers_inputs(batch, heads, n_q, n_k, dim, seed=n_q)
                run, out, lse = gp.prepare(q, k, v, dim ** -0.5, programs=3)  # several tiles per program
                run()
                torch.cuda.synchronize()
                say(f"{name}: {json.dumps(forward_errors(out, lse, q, k, v, dim ** -0.5))}")
            except Exception as error:  # noqa: BLE001
                say(f"{name}: FAILED {type(error).__name__}: {str(error)[-500:]}")
                traceback.print_exc()
    for shape, (batch, heads, n, dim) in SHAPES.items():
        scale = dim ** -0.5
        q, k, v = diffusers_inputs(batch, heads, n, n, dim)
        entry = results.setdefault(shape, {})
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            entry["cudnn_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))
        forced = {"hopper_forward": {"BLOCK_N": CONFIGS[dim][0][0], "STAGES": CONFIGS[dim][0][1]}}
        with settings.override(kernel_configs=forced) as shipped:
            out = torch.empty_like(q, memory_format=torch.contiguous_format)
            lse = torch.empty(q.shape[:3], device="cuda", dtype=torch.float32)
            entry["gluon_ms"] = bench(lambda: launch._hopper_attention(q, k, v, scale, out, lse, None, shipped))
        say(f"{shape}: cudnn {entry['cudnn_ms']:.4f} ms, shipped Gluon forward {entry['gluon_ms']:.4f} ms "
            f"({entry['gluon_ms'] / entry['cudnn_ms']:.3f}x)")
        for block_n, stages, pingpong in CONFIGS[dim]:
            name = f"persistent BN{block_n} stages{stages} {'pingpong' if pingpong else 'no-pingpong'}"
            try:
                run, out, lse = gp.prepare(q, k, v, scale, block_n, stages, pingpong)
                run()
                torch.cuda.synchronize()
                row = {**forward_errors(out, lse, q, k, v, scale), "ms": bench(run)}
                row["ratio"] = row["ms"] / entry["cudnn_ms"]
                entry[name] = row
                say(f"{shape} {name}: {row['ms']:.4f} ms ({row['ratio']:.3f}x cudnn), max err {row['max_err']:.2e}, "
                    f"lse err {row['lse_max_err']:.2e}")
            except Exception as error:  # noqa: BLE001 - reported per config
                entry[name] = {"error": f"{type(error).__name__}: {error}"[-2000:]}
                say(f"{shape} {name}: FAILED {entry[name]['error'][-500:]}")
                traceback.print_exc()
        say.save(results)


if __name__ == "__main__":
    main()
