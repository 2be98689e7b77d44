"""Probe 23: the warp-specialised Gluon key-mass pass (gluon_key_mass_ws.py, issue 19) against
the shipped Triton pass (``sinkattn.launch.key_mass``), at SD3-medium and Flux. Written in
session 11; run in session 12 (probe23_run1.txt, probe23_run2.txt: the Gluon pass at best
ties the Triton pass at Flux and loses at SD3-medium; kernels/NOTES.md, session 12).

On the H200: for each shape (bfloat16, diffusers' strided layout, the forward's lse2 from
``launch.attention``), the Triton pass's mass over all query rows (one call autotuned, as a
user's first call is, and one with its first config, as SINKATTN_AUTOTUNE=0 runs) and each
Gluon config's are compared (max relative error) and timed with do_bench (median). Lines are
appended to probe23.txt as they come (a hang keeps them).

    timeout 300 python3 benchmarks/probes/probe23.py --out DIR      # on the H200
    python3 benchmarks/probes/probe23.py --compile-only            # any machine: sm_90
"""

import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probes/
from probe_tools import ProbeLog, arguments, bench, compile_sm90, diffusers_inputs  # noqa: E402

SHAPES = {"sd3m_1024": (2, 24, 4429, 64), "flux_1024": (1, 24, 4608, 128)}
# (BLOCK_M, STAGES, PINGPONG, K_IN_REGISTERS); run 3 added the ping-pong between the
# consumers, run 4 the K tile held in registers
CONFIGS = {64: [(64, 4, False, True), (64, 8, False, True), (64, 4, True, True), (64, 4, False, False)],
           128: [(64, 4, False, True), (64, 3, False, True), (64, 4, True, True), (64, 4, False, False)]}


def compile_only():
    import gluon_key_mass_ws as gk
    from sinkattn import launch

    ok = True
    for dim in (64, 128):
        q = torch.empty(2, 100, 3 * dim, dtype=torch.bfloat16).view(2, 100, 3, dim).transpose(1, 2)
        for block_m, stages, pingpong, k_in_registers in CONFIGS[dim]:
            descs = {"q_desc": launch._tma_descriptor(q, block_m), "k_desc": launch._tma_descriptor(q, gk.BLOCK_N)}
            constexprs = dict(BLOCK_M=block_m, BLOCK_N=gk.BLOCK_N, D=dim, STAGES=stages, PINGPONG=pingpong,
                              K_IN_REGISTERS=k_in_registers, CONSUMER_REGS=gk.CONSUMER_REGS,
                              PRODUCER_REGS=gk.PRODUCER_REGS)
            pointers = {"LSE": "*fp32", "MASS": "*fp32", "qk_scale": "fp32", "inv_count": "fp32"}
            name = f"D{dim} BM{block_m} stages{stages} pingpong {pingpong} K in registers {k_in_registers}"
            ok &= compile_sm90(name, gk.gluon_key_mass_kernel, descs, pointers, constexprs, gk.MAXNREG)
    return ok


def main():
    args = arguments()
    if args.compile_only:
        sys.exit(0 if compile_only() else 1)

    import gluon_key_mass_ws as gk
    from sinkattn import launch, settings

    say = ProbeLog(args.out, "probe23")
    results = {}
    for shape, (batch, heads, n, dim) in SHAPES.items():
        q, k, v = diffusers_inputs(batch, heads, n, n, dim)
        scale, rows = dim ** -0.5, (0, n)
        _, lse = launch.attention(q, k, v, scale, out_dtype=q.dtype)
        entry = results.setdefault(shape, {})
        for autotune in (True, False):
            with settings.override(autotune=autotune):
                want = launch.key_mass(q, k, lse, scale, rows)
                ms = bench(lambda: launch.key_mass(q, k, lse, scale, rows))
            entry[f"triton_autotune_{autotune}_ms"] = ms
            say(f"{shape} triton key mass (autotune {autotune}): {ms:.4f} ms")
        for block_m, stages, pingpong, k_in_registers in CONFIGS[dim]:
            name = (f"gluon BM{block_m} stages{stages}{' pingpong' if pingpong else ''}"
                    f"{' K in registers' if k_in_registers else ''}")
            try:
                run, mass = gk.prepare(q, k, lse, scale, rows, block_m, stages, pingpong, k_in_registers)
                run()
                torch.cuda.synchronize()
                err = ((mass - want).abs().max() / want.abs().max()).item()
                ms = bench(run)
                entry[name] = {"ms": ms, "max_rel_err": err}
                say(f"{shape} {name}: {ms:.4f} ms, max error {err:.2e} of the largest mass")
            except Exception as error:  # noqa: BLE001 - reported per config
                entry[name] = {"error": f"{type(error).__name__}: {error}"[-2000:]}
                say(f"{shape} {name}: FAILED {entry[name]['error'][-500:]}")
                traceback.print_exc()
        say.save(results)


if __name__ == "__main__":
    main()
