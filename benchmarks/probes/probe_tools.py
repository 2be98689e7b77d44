"""What probes 22-24 share: their arguments, a do_bench median, their output line by line,
seeded inputs and the errors of a forward against SDPA, and the sm_90 compile check of a
Gluon kernel (no GPU needed).

    args = arguments()                     # --out DIR, --compile-only
    log = ProbeLog(args.out, "probe23")   # DIR/probe23.txt, DIR/probe23.json (no DIR: print only)
    log("a line")                          # printed and appended as it comes: a hang keeps it
    log.save(results)                      # the JSON, rewritten after every shape
"""

import argparse
import json
import math
from pathlib import Path


def arguments(*extra, compile_only=True):
    """--out DIR, --compile-only (if the probe has it), and ``extra`` (name, default) string
    options."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    if compile_only:
        parser.add_argument("--compile-only", action="store_true")
    for name, default in extra:
        parser.add_argument(name, default=default)
    return parser.parse_args()


def diffusers_inputs(batch, heads, n_q, n_k, dim, seed=0):
    """Seeded bfloat16 q, k, v on the GPU: (B, H, N, D) views of (B, N, H*D) projections."""
    import torch
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(batch, n, heads * dim, device="cuda", dtype=torch.bfloat16, generator=gen)
                 .view(batch, n, heads, dim).transpose(1, 2) for n in (n_q, n_k, n_k))


def reference_lse2(q, k, scale):
    """float32 logsumexp of the scaled scores per row, in log2 units (B, H, Nq)."""
    import torch
    rows = []
    for b in range(q.shape[0]):
        s = torch.matmul(q[b].float(), k[b].float().transpose(-1, -2)) * scale
        rows.append(torch.logsumexp(s, dim=-1) / math.log(2.0))
        del s
    return torch.stack(rows)


def forward_errors(out, lse, q, k, v, scale, ref=None, ref_lse=None):
    """Max abs errors of a forward's O against SDPA's and of its lse2 against float32's (the
    references computed here unless given), and whether both are finite."""
    import torch
    import torch.nn.functional as F
    ref = F.scaled_dot_product_attention(q, k, v, scale=scale) if ref is None else ref
    ref_lse = reference_lse2(q, k, scale) if ref_lse is None else ref_lse
    return {"max_err": (out.float() - ref.float()).abs().max().item(),
            "lse_max_err": (lse - ref_lse).abs().max().item(),
            "finite": bool(torch.isfinite(out).all().item() and torch.isfinite(lse).all().item())}


def compile_sm90(name, kernel, descs, pointers, constexprs, maxnreg):
    """Compile a Gluon kernel for sm_90 (4 warps in its default partition, ``maxnreg``):
    ``descs`` name -> TMA descriptor, ``pointers`` name -> type ("*fp32", "fp32"), every
    other runtime argument int32. Prints a line; True if it compiled."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    signature = {p.name: "constexpr" if p.name in constexprs else mangle_type(descs[p.name])
                 if p.name in descs else pointers.get(p.name, "i32") for p in kernel.params}
    try:
        compiled = triton.compile(GluonASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": 4, "maxnreg": maxnreg})
    except Exception as error:  # noqa: BLE001 - reported per config
        print(f"{name}: FAILED {type(error).__name__}: {str(error)[-1500:]}")
        return False
    print(f"{name}: ok, {compiled.metadata.num_warps} warps, shared {compiled.metadata.shared} bytes")
    return True


def bench(fn):
    """do_bench's median in ms, after one call (compiles, warms up)."""
    import triton
    fn()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


class ProbeLog:
    def __init__(self, out, name):
        import torch
        import triton
        self.dir, self.name = (Path(out) if out else None), name
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{name}.txt").write_text("")
        self.versions = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
        self(" ".join(f"{k} {v}" for k, v in self.versions.items()))

    def __call__(self, line):
        print(line, flush=True)
        if self.dir:
            with open(self.dir / f"{self.name}.txt", "a") as f:
                f.write(line + "\n")

    def save(self, results):
        if self.dir:
            (self.dir / f"{self.name}.json").write_text(json.dumps({**self.versions, **results}, indent=1))
