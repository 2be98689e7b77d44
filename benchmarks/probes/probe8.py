"""Session-4 probe 8 (one device call):
1. the forward with the scale folded into the exponentials' FFMA (FOLD_SCALE) against the
   explicit multiply, same config, bf16 and float32 output, SD3 / Flux / SDXL self;
   forward configs with and without a register cap (maxnreg);
2. the TMA-descriptor forward (tma_forward.py) against the shipped pointer-load forward;
3. the key-mass pass with a register cap;
4. the flagged-row pass by config and programs per SM, with 0, 2, ~1%, ~10% of the rows
   flagged and one whole head flagged;
5. the public op end to end against cuDNN in the same process (SD3).

    cd benchmarks && python3 probes/probe8.py | tee probes/probe8.txt
"""
import os
import sys
import time

import torch
import triton

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/
sys.path.insert(0, HERE)
from run import diffusers_layout  # noqa: E402
from tma_forward import tma_attention  # noqa: E402

from sinkattn import launch, sink_attention  # noqa: E402
from sinkattn.kernels import configs  # noqa: E402
from sinkattn.kernels.attention import attention_forward_kernel  # noqa: E402
from sinkattn.kernels.key_mass import key_mass_kernel  # noqa: E402

LOG2E = launch.LOG2E
SHAPES = {"sd3m": (2, 24, 4429, 64), "flux": (1, 24, 4608, 128), "sdxl_self": (2, 10, 4096, 64)}


def bench(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def forward(q, k, v, out_dtype, fold, bm, bn, warps, stages, maxnreg=None):
    B, H, N, D = q.shape
    out = torch.empty(B, H, N, D, device="cuda", dtype=out_dtype)
    lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    extra = {} if maxnreg is None else {"maxnreg": maxnreg}

    def run():
        attention_forward_kernel[(triton.cdiv(N, bm), B * H)](
            q, k, v, out, lse, None, None,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            H, N, N, 0, N, D ** -0.5 * LOG2E, 0, 0.0,
            D=D, DV=D, BLOCK_D=D, BLOCK_DV=D, BLOCK_M=bm, BLOCK_N=bn, BLOCK_T=16,
            WEIGHT_ON_VALUE=False, FOLD_SCALE=fold, DOT_PRECISION="tf32",
            num_warps=warps, num_stages=stages, **extra)
    return run, out, lse


print("== 1. forward: folded scale vs explicit multiply; configs; maxnreg", flush=True)
FWD = [(128, 64, 8, 4), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2)]
T0 = time.time()
for name, (B, H, N, D) in SHAPES.items():
    q, k, v = diffusers_layout(B, H, N, N, D)
    cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    print(f"{name}: cuDNN {cudnn:.4f} ms", flush=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
    for i, cfg in enumerate(FWD):
        if D == 128 and cfg[1] == 128 and cfg[3] >= 3:
            continue
        for out_dtype in ((torch.bfloat16, torch.float32) if i == 0 else (torch.float32,)):
            line = []
            for fold in (False, True):
                for maxnreg in ((None, 128) if fold and cfg[2] == 8 and i < 2 else (None,)):
                    try:
                        run, out, _ = forward(q, k, v, out_dtype, fold, *cfg, maxnreg=maxnreg)
                        ms = bench(run)
                        err = ((out.float() - ref).norm() / ref.norm()).item()
                        line.append(f"fold={int(fold)} maxnreg={maxnreg}: {ms:.4f} ms ({ms / cudnn:.3f}x, err {err:.1e})")
                    except Exception as e:  # noqa: BLE001
                        line.append(f"fold={int(fold)} maxnreg={maxnreg}: failed {type(e).__name__}: {str(e)[:80]}")
            print(f"  {cfg} out={str(out_dtype)[6:]}: " + " | ".join(line), flush=True)

print(f"[{time.time() - T0:.0f} s]", flush=True)
print("== 2. TMA-descriptor forward (bf16 out)", flush=True)
for name, (B, H, N, D) in SHAPES.items():
    q, k, v = diffusers_layout(B, H, N, N, D)
    cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
    for cfg in FWD:
        if D == 128 and cfg[1] == 128 and cfg[3] >= 3:
            continue
        try:
            out, _ = tma_attention(q, k, v, D ** -0.5, torch.bfloat16, *cfg)
            err = ((out.float() - ref).norm() / ref.norm()).item()
            ms = bench(lambda: tma_attention(q, k, v, D ** -0.5, torch.bfloat16, *cfg))
            print(f"  {name} {cfg}: {ms:.4f} ms ({ms / cudnn:.3f}x, err {err:.1e})", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  {name} {cfg}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)

print(f"[{time.time() - T0:.0f} s]", flush=True)
print("== 3. key-mass pass: configs x maxnreg (mass alone, lse from the forward)", flush=True)
KM = [(32, 64, 4, 3, True), (128, 64, 4, 3, False), (32, 128, 4, 3, False), (32, 128, 4, 4, True), (64, 64, 4, 3, False)]
for name, (B, H, N, D) in SHAPES.items():
    q, k, v = diffusers_layout(B, H, N, N, D)
    _, lse = launch.attention(q, k, v, D ** -0.5, torch.bfloat16)
    mass = torch.empty(1, B, H, N, device="cuda", dtype=torch.float32)
    for bm, bn, w, s, paired in KM:
        line = []
        for maxnreg in (None, 128, 96):
            extra = {} if maxnreg is None else {"maxnreg": maxnreg}

            def run():
                key_mass_kernel[(triton.cdiv(N, bn), B * H, 1)](
                    q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    H, N, N, 0, N, D ** -0.5 * LOG2E, 1.0 / N, D=D, BLOCK_D=D, BLOCK_M=bm, BLOCK_N=bn,
                    PAIRED=paired, DOT_PRECISION="tf32", num_warps=w, num_stages=s, **extra)
            try:
                line.append(f"maxnreg={maxnreg}: {bench(run) * 1e3:.1f} us")
            except Exception as e:  # noqa: BLE001
                line.append(f"maxnreg={maxnreg}: failed {type(e).__name__}")
        print(f"  {name} BM{bm} BN{bn} w{w} s{s} paired={paired}: " + " | ".join(line), flush=True)

print(f"[{time.time() - T0:.0f} s]", flush=True)
print("== 4. flagged-row pass (SD3 shape, score path, one sink per head)", flush=True)
B, H, N, D = SHAPES["sd3m"]
q, k, v = diffusers_layout(B, H, N, N, D)
out = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
sinks = torch.zeros(B, H, 1, device="cuda", dtype=torch.int64)
torch.manual_seed(1)
scenarios = {}
for share in (0.0, 1 / (B * H * N), 0.01, 0.1):
    flags = (torch.rand(B, H, N, device="cuda") < share).to(torch.int8)
    if share and not flags.any():
        flags[0, 0, N // 2] = 1
    scenarios[f"{int(flags.sum())} random rows"] = flags
head = torch.zeros(B, H, N, device="cuda", dtype=torch.int8)
head[1, 5] = 1
scenarios[f"one head ({N} rows)"] = head
masked, _ = launch.attention(q, k, v, D ** -0.5, torch.bfloat16, sinks=sinks)
original = configs.flagged_config
for bm, bn, w, s in [(128, 64, 8, 4), (64, 64, 4, 3), (32, 64, 4, 3), (32, 128, 4, 3), (16, 64, 4, 3),
                     (16, 128, 4, 3), (16, 128, 4, 4), (16, 256, 4, 3), (16, 64, 2, 3)]:
    cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": w, "num_stages": s}
    configs.flagged_config = lambda *a, cfg=cfg: cfg
    for per_sm in (2, 8, 16):
        configs.FLAGGED_PROGRAMS_PER_SM = per_sm
        line = []
        for label, flags in scenarios.items():
            try:
                out.fill_(float("nan"))
                launch.attention(q, k, v, D ** -0.5, torch.bfloat16, sinks=sinks, row_flags=flags, out=out)
                rows = flags.bool()
                ok = torch.equal(out[rows].isnan(), torch.zeros_like(out[rows], dtype=torch.bool))
                err = ((out[rows].float() - masked[rows].float()).norm() / masked[rows].float().norm().clamp_min(1e-30)).item() if rows.any() else 0.0
                ms = bench(lambda: launch.attention(q, k, v, D ** -0.5, torch.bfloat16, sinks=sinks, row_flags=flags, out=out))
                line.append(f"{label}: {ms * 1e3:.1f} us{'' if ok and err < 1e-2 else f' BAD err {err:.1e}'}")
            except Exception as e:  # noqa: BLE001
                line.append(f"{label}: failed {type(e).__name__}: {str(e)[:60]}")
        print(f"  BM{bm} BN{bn} w{w} s{s}, {per_sm}/SM: " + " | ".join(line), flush=True)
configs.flagged_config = original
configs.FLAGGED_PROGRAMS_PER_SM = 8

print(f"[{time.time() - T0:.0f} s]", flush=True)
print("== 5. public op, SD3 shape, shipped defaults (first flagged config, 8 programs/SM)", flush=True)
q, k, v = diffusers_layout(B, H, N, N, D)
cudnn = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
print(f"cuDNN {cudnn:.4f} ms", flush=True)
for label, kw in [("plain", dict(top_k=0)), ("mass", dict(top_k=0, path="none")),
                  ("sink_score", dict(top_k=1, path="score")), ("sink_value", dict(top_k=1, path="value"))]:
    ms = bench(lambda: sink_attention(q, k, v, **kw))
    print(f"  {label}: {ms:.4f} ms ({ms / cudnn:.3f}x)", flush=True)
print("chosen configs:", configs.chosen_configs(), flush=True)
