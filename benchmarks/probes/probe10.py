"""Session-4 probe 10: the flagged-tile pass with each flagged tile's keys split over
programs (kernels/attention.py flagged_tiles_kernel + combine_splits_kernel), through the
launcher, with 0, 1, 2, ~1%, ~10% of the rows flagged and one whole head flagged (SD3
shape), split mode against whole tiles (FLAGGED_MAX_SPLIT_TILES = 0); then the public op
against cuDNN in one process at SD3-medium and SDXL self (run.py's seeded draws, which
flag one row each: probe9).

    cd benchmarks && python3 probes/probe10.py | tee probes/probe10.txt
"""
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from run import SHAPES, diffusers_layout  # noqa: E402

from sinkattn import launch, sink_attention  # noqa: E402
from sinkattn.kernels import configs  # noqa: E402


def bench(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


B, H, N, _, D = SHAPES["sd3m_1024"]
q, k, v = diffusers_layout(B, H, N, N, D)
scale = D ** -0.5
sinks = torch.zeros(B, H, 1, device="cuda", dtype=torch.int64)
masked, _ = launch.attention(q, k, v, scale, torch.bfloat16, sinks=sinks)
bm = configs.CORRECTION_BLOCK_M
n_tiles = triton.cdiv(N, bm)
torch.manual_seed(1)
scenarios = {}
for rows in (0, 1, 2):
    flags = torch.zeros(B, H, N, dtype=torch.bool, device="cuda")
    for i in range(rows):
        flags[i % B, (7 * i) % H, (1000 * i + N // 2) % N] = True
    scenarios[f"{rows} rows"] = flags
for share in (0.01, 0.1):
    flags = torch.rand(B, H, N, device="cuda") < share
    scenarios[f"{int(flags.sum())} random rows"] = flags
head = torch.zeros(B, H, N, dtype=torch.bool, device="cuda")
head[1, 5] = True
scenarios[f"one head ({N} rows)"] = head
out = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
print(f"flagged-tile pass, SD3 shape, {configs.FLAGGED_KEY_SPLITS} key splits when <= "
      f"{configs.FLAGGED_MAX_SPLIT_TILES} tiles are flagged (us)", flush=True)
for label, flags in scenarios.items():
    padded = torch.zeros(B, H, n_tiles * bm, dtype=torch.bool, device="cuda")
    padded[..., :N] = flags
    tiles = padded.view(B * H, n_tiles, bm).any(-1)
    slots = torch.full((B * H, n_tiles), -1, dtype=torch.int32, device="cuda")
    slots[tiles] = torch.arange(int(tiles.sum()), device="cuda", dtype=torch.int32)
    count = tiles.sum().to(torch.int32).reshape(1)
    line = []
    for mode, max_tiles in (("split", 64), ("whole", 0)):
        configs.FLAGGED_MAX_SPLIT_TILES = max_tiles
        out.fill_(float("nan"))
        launch.recompute_flagged(q, k, v, scale, sinks, 0.0, "score", (0, N), slots, count, out)
        rows = tiles.view(B, H, n_tiles, 1).expand(B, H, n_tiles, bm).reshape(B, H, -1)[..., :N]
        ok = not out[rows].isnan().any().item()
        err = ((out[rows].float() - masked[rows].float()).norm() / masked[rows].float().norm()).item() if rows.any() else 0.0
        ms = bench(lambda: launch.recompute_flagged(q, k, v, scale, sinks, 0.0, "score", (0, N), slots, count, out))
        line.append(f"{mode} {ms * 1e3:.1f}{'' if ok and err < 1e-2 else f' BAD (err {err:.1e})'}")
    configs.FLAGGED_MAX_SPLIT_TILES = 64
    print(f"  {label} ({int(tiles.sum())} tiles): " + " | ".join(line), flush=True)

for shape in ("sd3m_1024", "sdxl_self_64x64", "flux_1024"):
    Bs, Hs, Nq, Nk, Ds = SHAPES[shape]
    q, k, v = diffusers_layout(Bs, Hs, Nq, Nk, Ds)
    cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    line = [f"cuDNN {cudnn:.4f} ms"]
    for label, kw in [("plain", dict(top_k=0)), ("mass", dict(top_k=0, path="none")),
                      ("sink_score", dict(top_k=1, path="score")), ("sink_value", dict(top_k=1, path="value"))]:
        ms = bench(lambda: sink_attention(q, k, v, **kw))
        line.append(f"{label} {ms:.4f} ({ms / cudnn:.2f}x)")
    print(f"{shape}: " + " | ".join(line), flush=True)
