"""Probe 17b: PixArt-Sigma's head dim 72 (16 heads x 72) on the kernels.

The PixArt row of whole_model measured 3.37x stock with sink k=1 in every layer; under
torch.profiler the sink forward's attention_forward_kernel took 1.64 ms per self-attention
call (B 2, H 16, N 4096) against cuDNN's 0.24 ms per call. Prediction: the head dim pads
to BLOCK_D 128 with masked loads of a 144-byte row; padding the tensors to 128 (or 80 ->
no: a power of two) before the call should cost ~0.65 ms (1.14x SD3's FLOPs at D128).
Times launch.attention, the key-mass pass and the whole op (sink k=1) at D 72 as diffusers
hands it, at D 72 zero-padded to 128 (copy included), and at D 64, against cuDNN."""
import torch, triton, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from sinkattn import launch, sink_attention
bench = lambda fn: triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")
for D in (72, 64, 128):
    B, H, N = 2, 16, 4096
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, N, H * D, device="cuda", dtype=torch.bfloat16).view(B, N, H, D).transpose(1, 2) for _ in range(3))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn = bench(lambda: F.scaled_dot_product_attention(q, k, v))
    fwd = bench(lambda: launch.attention(q, k, v, D ** -0.5, torch.bfloat16))
    sink = bench(lambda: sink_attention(q, k, v, top_k=1))
    print(f"D {D}: cudnn {cudnn:.3f} forward {fwd:.3f} sink_k1 {sink:.3f} ms", flush=True)
    if D == 72:
        pad = lambda t: F.pad(t, (0, 128 - D))
        def padded():
            return launch.attention(pad(q), pad(k), pad(v), D ** -0.5, torch.bfloat16)[0][..., :D]
        def padded_sink():
            return sink_attention(pad(q), pad(k), pad(v), top_k=1, scale=D ** -0.5).out[..., :D]
        ref = F.scaled_dot_product_attention(q, k, v)
        print(f"  padded to 128: forward {bench(padded):.3f} sink_k1 {bench(padded_sink):.3f} ms, "
              f"err {(padded().float() - ref.float()).abs().max().item():.2e}", flush=True)
