"""Session-2 probe: key-mass variants, forward configs, host overhead, per-kernel profile."""
import math, os, sys, time, json
import torch, triton
T0 = time.time()
LIMIT = float(os.environ.get("PROBE_LIMIT", 540))
sys.path.insert(0, os.path.dirname(__file__))
from sinkattn import launch, sink_attention, ops
from poly_key_mass import key_mass_kernel  # the session-2 candidate with EXP2_FMA_EVERY (not shipped)
from sinkattn.kernels.attention import attention_forward_kernel
import old_key_mass
torch.backends.cuda.matmul.allow_tf32 = False
LOG2E = 1 / math.log(2)

def left(): return LIMIT - (time.time() - T0)
def layout(B, H, Nq, Nk, D):
    q = torch.randn(B, Nq, H * D, device="cuda", dtype=torch.bfloat16).view(B, Nq, H, D).transpose(1, 2)
    k = torch.randn(B, Nk, H * D, device="cuda", dtype=torch.bfloat16).view(B, Nk, H, D).transpose(1, 2)
    v = torch.randn(B, Nk, H * D, device="cuda", dtype=torch.bfloat16).view(B, Nk, H, D).transpose(1, 2)
    return q, k, v

def ref_mass(q, k, lse, scale):
    B, H, N, D = q.shape
    m = torch.zeros(B, H, k.shape[2], dtype=torch.float64, device="cuda")
    for s in range(0, N, 512):
        st = torch.einsum("bhmd,bhnd->bhmn", q[:, :, s:s+512].double(), k.double()) * scale * LOG2E
        m += torch.exp2(st - lse[:, :, s:s+512, None].double()).sum(2)
    return m / N

def bench(fn):
    return triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median")

def mass_sweep(name, shape, cfgs, old_cfgs):
    B, H, N, _, D = shape
    q, k, v = layout(*shape)
    scale = D ** -0.5
    out, lse = launch.attention(q, k, v, scale, torch.bfloat16)
    ref = ref_mass(q, k, lse, scale)
    mass = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    args = lambda: (q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                    H, N, N, 0, N, scale * LOG2E, 1.0 / N)
    for kind, kernel, cl in (("old", old_key_mass.key_mass_kernel, old_cfgs), ("new", key_mass_kernel, cfgs)):
        for c in cl:
            if left() < 60: print("time guard"); return
            bm, bn, w, s = c[:4]
            extra = {} if kind == "old" else {"EXP2_FMA_EVERY": c[4]}
            grid = (triton.cdiv(N, bn), B * H)
            fn = lambda: kernel[grid](*args(), D=D, BLOCK_D=D, BLOCK_M=bm, BLOCK_N=bn, DOT_PRECISION="tf32",
                                      num_warps=w, num_stages=s, **extra)
            try:
                t0 = time.time(); fn(); torch.cuda.synchronize(); ct = time.time() - t0
                ms = bench(fn)
                err = ((mass.double() - ref).norm() / ref.norm()).item()
                print(f"MASS {name} {kind} bm{bm} bn{bn} w{w} s{s} g{extra.get('EXP2_FMA_EVERY', '-')}: {ms:.4f} ms  err {err:.2e}  (compile {ct:.1f}s)", flush=True)
            except Exception as e:
                print(f"MASS {name} {kind} {c} failed: {type(e).__name__} {str(e)[:200]}", flush=True)

D64 = [(bm, bn, w, s, g) for g in (0, 4, 3) for (bm, bn, w, s) in [(64, 128, 8, 3), (32, 128, 4, 4), (64, 128, 4, 3), (64, 256, 8, 3), (32, 256, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3)]]
mass_sweep("sd3m", (2, 24, 4429, 4429, 64), D64, [(32, 128, 4, 4), (64, 128, 8, 3)])
print("elapsed", time.time() - T0, flush=True)
best_d64 = [(64, 128, 8, 3, 0), (64, 128, 8, 3, 4), (32, 128, 4, 4, 4), (64, 256, 8, 3, 4), (64, 128, 4, 3, 4)]
mass_sweep("sdxl_self", (2, 10, 4096, 4096, 64), best_d64, [(32, 128, 4, 4)])
D128 = [(bm, bn, w, s, g) for g in (0, 4) for (bm, bn, w, s) in [(64, 128, 4, 3), (64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (64, 256, 8, 2)]]
mass_sweep("flux", (1, 24, 4608, 4608, 128), D128, [(64, 128, 4, 3)])
print("elapsed", time.time() - T0, flush=True)

# Host overhead: sdxl cross (GPU work is tiny), per call wall time without sync.
q, k, v = layout(2, 10, 4096, 77, 64)
for mode, kw in (("plain", dict(top_k=0)), ("mass", dict(top_k=0, path="none")), ("sink", dict(top_k=1))):
    for route in ("direct", "op"):
        ops_traced = ops._traced
        if route == "op": ops._traced = lambda *a: True
        for _ in range(20): sink_attention(q, k, v, **kw)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(300): sink_attention(q, k, v, **kw)
        torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 300 * 1e6
        ops._traced = ops_traced
        print(f"HOST sdxl_cross {mode} {route}: {dt:.1f} us/call", flush=True)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(300): launch.attention(q, k, v, 0.125, torch.bfloat16)
torch.cuda.synchronize(); print(f"HOST launch.attention alone: {(time.perf_counter() - t) / 300 * 1e6:.1f} us", flush=True)
t = time.perf_counter()
for _ in range(300): torch.empty(10, device="cuda").add_(1)
torch.cuda.synchronize(); print(f"HOST torch op pair: {(time.perf_counter() - t) / 300 * 1e6:.1f} us", flush=True)

# Per-kernel profile of sink_score.
from torch.profiler import profile, ProfilerActivity
for name, shape in (("sdxl_self", (2, 10, 4096, 4096, 64)), ("sd3m", (2, 24, 4429, 4429, 64))):
    q, k, v = layout(*shape)
    for _ in range(3): sink_attention(q, k, v, top_k=1)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(5): sink_attention(q, k, v, top_k=1)
        torch.cuda.synchronize()
    print(f"PROFILE {name}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60), flush=True)
    print("sink_score do_bench ms:", bench(lambda: sink_attention(q, k, v, top_k=1)), "mass:", bench(lambda: sink_attention(q, k, v, top_k=0, path="none")), "plain:", bench(lambda: sink_attention(q, k, v, top_k=0)), flush=True)
print("elapsed", time.time() - T0, flush=True)

# Forward configs (D128 Flux and D64 SD3m), plain bf16 out.
def fwd_sweep(name, shape, cfgs):
    B, H, N, _, D = shape
    q, k, v = layout(*shape)
    o = torch.empty(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    lse = torch.empty(B, H, N, device="cuda", dtype=torch.float32)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cud = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    print(f"FWD {name} cudnn {cud:.4f} ms", flush=True)
    for bm, bn, w, s in cfgs:
        if left() < 25: print("time guard"); return
        grid = (triton.cdiv(N, bm), B * H)
        fn = lambda: attention_forward_kernel[grid](q, k, v, o, lse, None, None, q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            H, N, N, 0, N, D ** -0.5 * LOG2E, D=D, DV=D, BLOCK_D=D, BLOCK_DV=D, BLOCK_M=bm, BLOCK_N=bn,
            WEIGHT_ON_VALUE=False, DOT_PRECISION="tf32", num_warps=w, num_stages=s)
        try:
            fn(); ms = bench(fn)
            print(f"FWD {name} bm{bm} bn{bn} w{w} s{s}: {ms:.4f} ms  x{ms / cud:.3f}", flush=True)
        except Exception as e:
            print(f"FWD {name} {(bm, bn, w, s)} failed: {type(e).__name__} {str(e)[:150]}", flush=True)
fwd_sweep("flux", (1, 24, 4608, 4608, 128), [(128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 4), (128, 32, 4, 4), (64, 64, 4, 3), (128, 64, 4, 3), (64, 128, 4, 2)])
fwd_sweep("sd3m", (2, 24, 4429, 4429, 64), [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2)])
print("done", time.time() - T0)
