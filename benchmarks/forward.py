"""The SD3-medium-sized transformer forward (random weights built from config, bf16,
1024px, batch 2: 4096 image + 333 text tokens, 24 joint blocks) with the stock processor
against SinkSuppressProcessor(k=1) in every layer. Used by run.py --forward."""

from __future__ import annotations

import torch
from timing import measure  # benchmarks/timing.py

SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)


def sd3_medium_inputs(batch=2, size=128, text=333, device="cuda", dtype=torch.bfloat16):
    return dict(hidden_states=torch.randn(batch, 16, size, size, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(batch, text, 4096, device=device, dtype=dtype),
                pooled_projections=torch.randn(batch, 2048, device=device, dtype=dtype),
                timestep=torch.full((batch,), 500.0, device=device))


def bench_forward(k=1):
    from diffusers import SD3Transformer2DModel
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from sinkattn.processors import SinkSuppressProcessor

    torch.manual_seed(0)
    model = SD3Transformer2DModel(**SD3_MEDIUM).to("cuda", torch.bfloat16).eval()
    inputs = sd3_medium_inputs()
    rows = []
    timings = {}
    for mode, processor in (("stock", JointAttnProcessor2_0()), (f"sink_score_all_layers_k{k}", SinkSuppressProcessor(k=k))):
        model.set_attn_processor(processor)

        def forward():
            with torch.no_grad():
                return model(**inputs, return_dict=False)[0]

        timings[mode] = measure(forward, warmup_ms=200, rep_ms=1500)
    stock_ms = timings["stock"][0]
    for mode, (ms, peak) in timings.items():
        rows.append({"shape": "sd3m_forward_all_layers", "mode": mode, "ms": ms, "baseline_ms": stock_ms,
                     "ratio": ms / stock_ms, "tflops": None, "peak_extra_mb": peak})
        print(f"sd3m_forward_all_layers {mode:28s} {ms:8.2f} ms  x{ms / stock_ms:5.2f}  {peak:9.1f} MiB", flush=True)
    return rows
