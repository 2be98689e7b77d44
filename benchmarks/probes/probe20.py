"""Probe 20: the tracer's per-call kernels at SD3-medium (issue 18's 5% bar, graphed).

probe18 run 5 read, per SD3-medium forward of 24 calls: query_stats_kernel 2.17 ms (key
ranges of 512, 5 rounds of max and argmax per key tile), its merge 0.62 ms (one program per
batch row), mass_stats_kernel 0.78 ms (the head-mean program adding 24 rows per tile).
Those kernels were then rewritten: per-column top 5 (an elementwise chain, no branch), a
merge per (batch row, head), the head mean from one torch mean. Prediction: query stats
~0.4 ms (1728 programs of 8 branch-free key tiles), merge ~0.1 ms, mass stats ~0.2 ms per
forward. This times each launcher in a CUDA graph (triton.testing.do_bench_cudagraph, ms per
call, x24 for a forward) at B2 H24 Nk4429 D64 bf16 with 64 sampled rows, over key-range
sizes and row-tile heights.

    python3 benchmarks/probes/probe20.py --out DIR
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    from sinkattn import launch
    from sinkattn.tracing import _FIXED

    torch.manual_seed(0)
    batch, heads, n_k, n_text, dim = 2, 24, 4429, 333, 64
    q = torch.randn(batch, n_k, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(batch, n_k, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    rows = torch.linspace(0, n_k - n_text - 1, 64, device="cuda").round().long()
    mass = torch.rand(batch, heads, n_k, device="cuda") ** 4
    mass = mass / mass.sum(-1, keepdim=True)
    out = torch.empty(batch, heads + 1, _FIXED + 10, device="cuda")
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "shape": "B2 H24 Nk4429 D64 bf16, 64 rows", "ms_per_call": {}}
    lines = []

    def timed(name, fn):
        fn()
        torch.cuda.synchronize()
        ms = triton.testing.do_bench_cudagraph(fn, rep=50)
        results["ms_per_call"][name] = ms
        lines.append(f"{name:40s} {ms * 1000:8.1f} us per call  {ms * 24:6.3f} ms per forward")
        print(lines[-1], flush=True)

    for keys in (256, 512, 1024, 2048, 4480):
        for block_m in (16, 32, 64):
            timed(f"query_stats keys{keys} m{block_m}", lambda: launch.query_stats(
                q, k, rows, dim**-0.5, means_into=out[:, :heads, 5:7], keys_per_split=keys, block_m=block_m))
    timed("trace_mass_stats", lambda: launch.trace_mass_stats(mass, None, (4096, n_k), (0, 4096), 5, _FIXED, out,
                                                              query="head_mean"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe20.json").write_text(json.dumps(results, indent=1))
    (Path(args.out) / "probe20.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
