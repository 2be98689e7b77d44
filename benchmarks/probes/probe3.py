"""Session-2 probe 3: per-kernel GPU time of sink_score vs sink_value at SD3-medium and SDXL self."""
import torch, triton
from torch.profiler import profile, ProfilerActivity
from sinkattn import sink_attention


def layout(B, H, N, D):
    return [torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16).view(B, N, H, D).transpose(1, 2) for _ in range(3)]


for name, shape in (("sd3m", (2, 24, 4429, 64)), ("sdxl_self", (2, 10, 4096, 64))):
    q, k, v = layout(*shape)
    for path in ("score", "value", "none"):
        kw = dict(top_k=1, path=path) if path != "none" else dict(top_k=0, path="none")
        for _ in range(3):
            sink_attention(q, k, v, **kw)
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(lambda: sink_attention(q, k, v, **kw), warmup=25, rep=200, return_mode="median")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                sink_attention(q, k, v, **kw)
            torch.cuda.synchronize()
        kernels = {e.key[:40]: e.device_time_total / 10 for e in prof.key_averages() if e.device_time_total > 0}
        print(f"{name} {path}: do_bench {ms:.4f} ms; GPU us per call: " + ", ".join(f"{k}={v:.1f}" for k, v in sorted(kernels.items(), key=lambda x: -x[1])), flush=True)
