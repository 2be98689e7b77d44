"""Session-3 probe 5: per-kernel GPU time per call (torch.profiler) of plain, mass,
sink_score and sink_value at SD3-medium, Flux and SDXL self with the session-3 kernels
(paired key-mass loop, strided flagged-row pass); how many rows the correction flags on
those inputs; the same for the SD3-medium-sized transformer forward (rows flagged per
layer, GPU time by kernel with the stock and the sink processor).

    cd benchmarks && python3 probes/probe5.py | tee probes/probe5.txt
"""
import os
import sys

import torch
import triton
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/
from forward import SD3_MEDIUM, sd3_medium_inputs  # noqa: E402
from run import diffusers_layout  # noqa: E402

from sinkattn import launch, sink_attention  # noqa: E402

flagged = []
_correct = launch.correct


def counting_correct(*args, **kwargs):
    out, flags = _correct(*args, **kwargs)
    flagged.append(int(flags.sum()))
    return out, flags


def gpu_us(fn, calls=10):
    """GPU time per call by kernel name (first 40 characters), largest first."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times = {e.key[:40]: e.device_time_total / calls for e in prof.key_averages() if e.device_time_total > 0}
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


MODES = {"plain": dict(top_k=0), "mass": dict(top_k=0, path="none", return_mass=True),
         "score": dict(top_k=1, path="score"), "value": dict(top_k=1, path="value")}
for name, (B, H, N, D) in {"sd3m": (2, 24, 4429, 64), "flux": (1, 24, 4608, 128), "sdxl_self": (2, 10, 4096, 64)}.items():
    q, k, v = diffusers_layout(B, H, N, N, D)
    for mode, kw in MODES.items():
        def call():
            sink_attention(q, k, v, **kw)
        ms = triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median")
        times = gpu_us(call)
        print(f"{name} {mode}: do_bench {ms:.4f} ms, GPU {sum(times.values()):.1f} us per call: "
              + ", ".join(f"{kname}={t:.1f}" for kname, t in times.items()), flush=True)
    launch.correct = counting_correct
    flagged.clear()
    for path in ("score", "value"):
        sink_attention(q, k, v, top_k=1, path=path)
    launch.correct = _correct
    print(f"{name}: rows flagged by the correction (score, value): {flagged} of {B * H * N}", flush=True)

from diffusers import SD3Transformer2DModel  # noqa: E402
from diffusers.models.attention_processor import JointAttnProcessor2_0  # noqa: E402

from sinkattn.processors import SinkSuppressProcessor  # noqa: E402

torch.manual_seed(0)
model = SD3Transformer2DModel(**SD3_MEDIUM).to("cuda", torch.bfloat16).eval()
inputs = sd3_medium_inputs()
for label, processor in (("stock", JointAttnProcessor2_0()), ("sink k=1", SinkSuppressProcessor(k=1))):
    model.set_attn_processor(processor)

    def forward():
        with torch.no_grad():
            model(**inputs, return_dict=False)

    launch.correct = counting_correct
    flagged.clear()
    forward()
    launch.correct = _correct
    if flagged:
        print(f"forward {label}: rows flagged per layer {flagged} of {2 * 24 * 4429} each", flush=True)
    times = gpu_us(forward, calls=3)
    top = list(times.items())[:12]
    print(f"forward {label}: GPU {sum(times.values()) / 1e3:.2f} ms per forward; top kernels (us): "
          + ", ".join(f"{kname}={t:.0f}" for kname, t in top), flush=True)

from sinkattn.kernels import configs  # noqa: E402

print("configs chosen by the autotuner in this process:", configs.chosen_configs(), flush=True)
