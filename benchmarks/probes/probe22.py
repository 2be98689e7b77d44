"""Probe 22: the candidate FA3-style Gluon forward (gluon_forward.py) against cuDNN and the
shipped forward (issue 19). Not yet run on a GPU: written and compile-checked without one.

For SD3-medium (B2 H24 N4429 D64) and Flux (B1 H24 N4608 D128), bfloat16, q, k, v in
diffusers' strided layout, each Gluon config is checked against
``torch.nn.functional.scaled_dot_product_attention`` (max abs error of O) and a float32
logsumexp (max abs error of lse2, log2 units), then timed with do_bench (median) beside the
shipped forward (``sinkattn.launch.attention``) and cuDNN SDPA; ratios are to cuDNN. The
Gluon kernel is timed as prepared (outputs and TMA descriptors made once, ``prepare``): each
timed call is its launch alone. Before the timings, small sequence lengths (one key tile, a
partial second tile) and a contiguous (B, H, N, D) layout are checked too. A config that
fails is reported with its error; lines are written as they come (a hang keeps them).

    timeout 900 python3 benchmarks/probes/probe22.py --out DIR     # on the H200
    python3 benchmarks/probes/probe22.py --compile-only [--out DIR]  # any machine: sm_90
"""

import argparse
import json
import math
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # probes/
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

SHAPES = {"sd3m_1024": (2, 24, 4429, 64), "flux_1024": (1, 24, 4608, 128)}
# (BLOCK_N, STAGES, PINGPONG) per head dim; the first is gluon_forward.DEFAULT_CONFIGS'.
CONFIGS = {64: [(128, 4, True), (128, 4, False), (128, 2, True), (64, 4, True)],
           128: [(128, 2, True), (128, 2, False), (64, 4, True), (64, 2, True)]}
# Correctness only: (B, H, N) at each head dim: one key tile, a partial second, odd tails.
SMALL = [(1, 2, 100), (1, 2, 130), (2, 3, 257), (1, 1, 4096)]


def _ptxas_info(ptx):
    """ptxas -v's registers and spills for the PTX (Triton's own ptxas), or None."""
    import os
    import tempfile

    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        run = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    return "; ".join(line.split("info    :")[-1].strip() for line in run.stderr.splitlines()
                     if "registers" in line or "spill" in line)


def compile_config(batch, heads, n, dim, block_n, stages, pingpong):
    """Compile gluon_attention_kernel for sm_90 as the launcher would launch it (no GPU)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    import gluon_forward as gf

    q = torch.empty(batch, n, heads * dim, dtype=torch.bfloat16).view(batch, n, heads, dim).transpose(1, 2)
    descs = {"q_desc": gf._descriptor(q, 64), "k_desc": gf._descriptor(q, block_n),
             "v_desc": gf._descriptor(q, block_n)}
    constexprs = dict(BLOCK_M=64, BLOCK_N=block_n, D=dim, STAGES=stages, PINGPONG=pingpong,
                      CONSUMER_REGS=gf.CONSUMER_REGS, PRODUCER_REGS=gf.PRODUCER_REGS)
    pointers = {"O": "*bf16", "LSE": "*fp32"}
    signature = {}
    for param in gf.gluon_attention_kernel.params:
        name = param.name
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in descs:
            signature[name] = mangle_type(descs[name])
        else:
            signature[name] = pointers.get(name, "fp32" if name == "qk_scale" else "i32")
    source = GluonASTSource(gf.gluon_attention_kernel, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "maxnreg": gf.MAXNREG})


def compile_only(out):
    import triton
    lines = [f"triton {triton.__version__}: gluon_attention_kernel compiled for sm_90 (no GPU)"]
    results = []
    for shape, (batch, heads, n, dim) in SHAPES.items():
        for block_n, stages, pingpong in CONFIGS[dim]:
            name = f"{shape} BN{block_n} stages{stages} {'pingpong' if pingpong else 'no-pingpong'}"
            try:
                compiled = compile_config(batch, heads, n, dim, block_n, stages, pingpong)
                meta = compiled.metadata
                row = {"config": name, "ok": bool(compiled.asm.get("cubin")), "shared": meta.shared,
                       "num_warps": meta.num_warps, "ptxas": _ptxas_info(compiled.asm["ptx"])}
                lines.append(f"{name}: ok, shared {meta.shared} bytes, {meta.num_warps} warps, {row['ptxas']}")
            except Exception as error:  # noqa: BLE001 - reported per config
                row = {"config": name, "ok": False, "error": f"{type(error).__name__}: {error}"[-2000:]}
                lines.append(f"{name}: FAILED {row['error']}")
            results.append(row)
    print("\n".join(lines))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"probe22_compile_{triton.__version__}.json").write_text(json.dumps(results, indent=1))
    return all(r["ok"] for r in results)


def _inputs(batch, heads, n, dim, seed=0):
    import torch
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def one():
        return torch.randn(batch, n, heads * dim, device="cuda", dtype=torch.bfloat16,
                           generator=gen).view(batch, n, heads, dim).transpose(1, 2)
    return one(), one(), one()


def _reference_lse2(q, k, scale):
    """float32 logsumexp of the scaled scores per row, in log2 units (B, H, N)."""
    import torch
    rows = []
    for b in range(q.shape[0]):
        s = torch.matmul(q[b].float(), k[b].float().transpose(-1, -2)) * scale
        rows.append(torch.logsumexp(s, dim=-1) / math.log(2.0))
        del s
    return torch.stack(rows)


def _check(q, k, v, scale, ref=None, ref_lse=None, **config):
    """Max abs errors of the Gluon O against SDPA's and of its lse2 against float32's."""
    import torch
    import torch.nn.functional as F

    import gluon_forward as gf
    out, lse = gf.gluon_attention(q, k, v, scale, **config)
    torch.cuda.synchronize()
    ref = F.scaled_dot_product_attention(q, k, v, scale=scale) if ref is None else ref
    ref_lse = _reference_lse2(q, k, scale) if ref_lse is None else ref_lse
    assert out.shape == ref.shape and out.dtype == q.dtype and lse.shape == ref_lse.shape
    return {"max_err": (out.float() - ref.float()).abs().max().item(),
            "lse_max_err": (lse - ref_lse).abs().max().item(),
            "finite": bool(torch.isfinite(out).all().item() and torch.isfinite(lse).all().item())}


def _bench(fn):
    import triton
    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    if args.compile_only:
        sys.exit(0 if compile_only(args.out) else 1)

    import torch
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sinkattn import launch
    print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(), flush=True)
    try:
        import gluon_forward as gf
    except Exception:  # the Gluon API of this Triton differs: show where
        traceback.print_exc()
        sys.exit(1)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "small": [], "shapes": {}}
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe22.txt").write_text("")

    def say(line):
        # Appended line by line: a kernel that hangs leaves the lines before it.
        print(line, flush=True)
        if out:
            with open(out / "probe22.txt", "a") as f:
                f.write(line + "\n")

    # Small sequences and the contiguous layout: correctness only, default configs.
    for dim in (64, 128):
        for batch, heads, n in SMALL:
            name = f"small B{batch} H{heads} N{n} D{dim}"
            try:
                q, k, v = _inputs(batch, heads, n, dim, seed=n)
                row = {"case": name, **_check(q, k, v, dim ** -0.5)}
                row["contiguous"] = _check(q.contiguous(), k.contiguous(), v.contiguous(), dim ** -0.5)
            except Exception as error:  # noqa: BLE001
                row = {"case": name, "error": f"{type(error).__name__}: {error}"[-2000:]}
                traceback.print_exc()
            result["small"].append(row)
            say(json.dumps(row))
    if out:
        (out / "probe22.json").write_text(json.dumps(result, indent=1))

    for shape in args.shapes.split(","):
        batch, heads, n, dim = SHAPES[shape]
        scale = dim ** -0.5
        q, k, v = _inputs(batch, heads, n, dim)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            t_cudnn = _bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale))
        shipped_out, shipped_lse = launch.attention(q, k, v, scale, out_dtype=q.dtype)
        ref = F.scaled_dot_product_attention(q, k, v, scale=scale)
        ref_lse = _reference_lse2(q, k, scale)
        shipped_err = (shipped_out.float() - ref.float()).abs().max().item()
        t_shipped = _bench(lambda: launch.attention(q, k, v, scale, out_dtype=q.dtype))
        flops = 4 * batch * heads * n * n * dim
        entry = {"cudnn_ms": t_cudnn, "shipped_ms": t_shipped, "shipped_ratio": t_shipped / t_cudnn,
                 "shipped_max_err": shipped_err,
                 "shipped_lse_max_err": (shipped_lse - ref_lse).abs().max().item(), "configs": []}
        say(f"{shape}: cudnn {t_cudnn:.4f} ms ({flops / t_cudnn / 1e9:.0f} TFLOP/s), shipped {t_shipped:.4f} ms "
            f"({t_shipped / t_cudnn:.3f}x cudnn), shipped max err {shipped_err:.2e}, "
            f"lse err {entry['shipped_lse_max_err']:.2e}")
        for block_n, stages, pingpong in CONFIGS[dim]:
            config = dict(block_n=block_n, stages=stages, pingpong=pingpong)
            name = f"gluon BN{block_n} stages{stages} {'pingpong' if pingpong else 'no-pingpong'}"
            try:
                row = {"config": name, **_check(q, k, v, scale, ref, ref_lse, **config)}
                # Timed as prepared (outputs and TMA descriptors made once): each call is
                # the kernel's launch alone.
                run, _, lse = gf.prepare(q, k, v, scale, **config)
                run()
                row["lse_vs_shipped"] = (lse - shipped_lse).abs().max().item()
                row["ms"] = _bench(run)
                row["ratio"] = row["ms"] / t_cudnn
                say(f"{shape} {name}: {row['ms']:.4f} ms ({row['ratio']:.3f}x cudnn, "
                    f"{flops / row['ms'] / 1e9:.0f} TFLOP/s), max err {row['max_err']:.2e}, "
                    f"lse err {row['lse_max_err']:.2e} (vs shipped {row['lse_vs_shipped']:.2e})")
            except Exception as error:  # noqa: BLE001 - reported per config
                row = {"config": name, "error": f"{type(error).__name__}: {error}"[-2000:]}
                say(f"{shape} {name}: FAILED {row['error'][-500:]}")
                traceback.print_exc()
            entry["configs"].append(row)
        result["shapes"][shape] = entry
        if out:
            (out / "probe22.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
