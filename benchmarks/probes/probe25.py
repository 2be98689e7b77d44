"""Probe 25: the persistent Gluon forward (gluon_forward_persistent.py) with two and three
consumer warpgroups at head dim 64, against SDPA, timed beside the Triton forward (what
launch runs at D64) and cuDNN at SD3-medium, SD3.5-large and SDXL self (issue 19's 0.90 bar).

Session 12's question: session 11's three-consumer kernel tied or beat the Triton forward at
SD3-medium and SD3.5-large but lost SDXL self to its wave tail, and probe24's persistent grid
gained 5% at SD3-medium with two consumers. Does the persistent three-consumer kernel beat the
Triton forward at all three shapes?

    timeout 300 python3 benchmarks/probes/probe25.py --out DIR     # on the H200
    python3 benchmarks/probes/probe25.py --compile-only           # any machine: sm_90
"""

import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probes/
from probe_tools import ProbeLog, arguments, bench, compile_sm90, diffusers_inputs, forward_errors  # noqa: E402

SHAPES = {"sd3m_1024": (2, 24, 4429, 64), "sd35l_1024": (2, 38, 4429, 64), "sdxl_self_64x64": (2, 10, 4096, 64)}
CONFIGS = [(3, 128, 2), (3, 128, 4), (2, 128, 4)]  # CONSUMERS, BLOCK_N, STAGES (ping-pong on)
SMALL = [(1, 2, 100, 100), (2, 3, 257, 130), (1, 2, 1, 333), (1, 3, 700, 300)]  # (B, H, Nq, Nk)


def compile_only():
    import gluon_forward_persistent as gp
    from sinkattn import launch

    ok = True
    dim = 64
    q = torch.empty(2, 100, 3 * dim, dtype=torch.bfloat16).view(2, 100, 3, dim).transpose(1, 2)
    for consumers, block_n, stages in CONFIGS:
        registers = gp.REGISTERS[consumers]
        descs = {"q_desc": launch._tma_descriptor(q, gp.BLOCK_M), "k_desc": launch._tma_descriptor(q, block_n),
                 "v_desc": launch._tma_descriptor(q, block_n)}
        constexprs = dict(BLOCK_N=block_n, D=dim, STAGES=stages, CONSUMERS=consumers, PINGPONG=True,
                          CONSUMER_REGS=registers["CONSUMER_REGS"], PRODUCER_REGS=registers["PRODUCER_REGS"])
        ok &= compile_sm90(f"D{dim} consumers{consumers} BN{block_n} stages{stages}", gp.persistent_attention_kernel,
                           descs, {"O": "*bf16", "LSE": "*fp32", "qk_scale": "fp32"}, constexprs, registers["MAXNREG"])
    return ok


def main():
    args = arguments()
    if args.compile_only:
        sys.exit(0 if compile_only() else 1)

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import gluon_forward_persistent as gp
    from sinkattn import launch

    say = ProbeLog(args.out, "probe25")
    results = {}
    for consumers in (3, 2):
        for batch, heads, n_q, n_k in SMALL:
            name = f"small consumers{consumers} B{batch} H{heads} Nq{n_q} Nk{n_k} D64"
            try:
                q, k, v = diffusers_inputs(batch, heads, n_q, n_k, 64, seed=n_q)
                run, out, lse = gp.prepare(q, k, v, 64 ** -0.5, programs=3, consumers=consumers)  # tiles per program
                run()
                torch.cuda.synchronize()
                say(f"{name}: {json.dumps(forward_errors(out, lse, q, k, v, 64 ** -0.5))}")
            except Exception as error:  # noqa: BLE001
                say(f"{name}: FAILED {type(error).__name__}: {str(error)[-500:]}")
                traceback.print_exc()
    for shape, (batch, heads, n, dim) in SHAPES.items():
        scale = dim ** -0.5
        q, k, v = diffusers_inputs(batch, heads, n, n, dim)
        entry = results.setdefault(shape, {})
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            entry["cudnn_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))
        entry["triton_ms"] = bench(lambda: launch.attention(q, k, v, scale, q.dtype))  # D64: the Triton forward
        say(f"{shape}: cudnn {entry['cudnn_ms']:.4f} ms, Triton forward {entry['triton_ms']:.4f} ms "
            f"({entry['triton_ms'] / entry['cudnn_ms']:.3f}x)")
        for consumers, block_n, stages in CONFIGS:
            name = f"persistent consumers{consumers} BN{block_n} stages{stages}"
            try:
                run, out, lse = gp.prepare(q, k, v, scale, block_n, stages, True, consumers=consumers)
                run()
                torch.cuda.synchronize()
                row = {**forward_errors(out, lse, q, k, v, scale), "ms": bench(run)}
                row["ratio"] = row["ms"] / entry["cudnn_ms"]
                entry[name] = row
                say(f"{shape} {name}: {row['ms']:.4f} ms ({row['ratio']:.3f}x cudnn, "
                    f"{row['ms'] / entry['triton_ms']:.3f}x Triton), max err {row['max_err']:.2e}, "
                    f"lse err {row['lse_max_err']:.2e}")
            except Exception as error:  # noqa: BLE001 - reported per config
                entry[name] = {"error": f"{type(error).__name__}: {error}"[-2000:]}
                say(f"{shape} {name}: FAILED {entry[name]['error'][-500:]}")
                traceback.print_exc()
        say.save(results)


if __name__ == "__main__":
    main()
