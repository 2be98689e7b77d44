"""Whole-model benchmark (issue 15): real-size diffusion denoisers with random weights built
from their diffusers configs (no download), bf16, 1024px, with sinkattn in every attention
layer, against the stock processor in the same process.

    python3 benchmarks/whole_model.py --out benchmarks/results/whole_model_h200.json
    python3 benchmarks/whole_model.py --shapes sdxl_unet_1024 --modes stock,sink_score --out ...
    python3 benchmarks/whole_model.py --tiny --out /tmp/whole_model_tiny.json   # CPU smoke run
    python3 benchmarks/whole_model.py --merge sd3.json flux.json sdxl.json --out results/whole_model_h200.json

Shapes: ``sd3m_transformer_1024`` (SD3-medium: 24 joint blocks, 24 heads x 64, batch 2, 4096
image + 333 text tokens), ``flux_transformer_1024`` (Flux at full width, 24 heads x 128, but
4 double + 8 single blocks; batch 1, 4096 image + 512 text tokens), ``sdxl_unet_1024`` (the
SDXL base UNet, batch 2: self-attention over 4096 and 1024 tokens, cross-attention to 77),
``sd3m_denoise_28`` (a whole 28-step SD3-medium-sized denoising loop with classifier-free
guidance: the transformer above, tiny text encoders of the right widths, latents out).

Family shapes (issue 17; not in the default run, name them with ``--shapes``): the other rows of
sinkattn.processors.families.MODEL_FAMILIES at their published width and real token counts,
``sd35m_transformer_1024`` (SD3.5-medium, MMDiT-X: 24 blocks, the first 13 with the extra
image-only attention, RMS QK-norm; batch 2, 4096 + 333 tokens), ``sd35l_transformer_1024``
(SD3.5-large: 38 blocks of 38 heads x 64, RMS QK-norm; batch 2, 4096 + 333 tokens),
``pixart_sigma_transformer_1024`` (PixArt-Sigma XL: 28 blocks of 16 heads x 72; batch 2, 4096
image tokens, cross-attention to 300 T5 tokens under their padding mask),
``qwen_transformer_1024_12blocks`` (Qwen-Image at full width, 24 heads x 128, but 12 of its 60
blocks; batch 1, 128 text + 4096 image tokens) and ``wan_t2v_480p_81f_10blocks`` (Wan 2.1
T2V-1.3B at full width, 12 heads x 128, but 10 of its 30 blocks; batch 1, an 81-frame 480x832
video: 21 x 30 x 52 = 32760 tokens, cross-attention to 512 UMT5 tokens). Qwen-Image and Wan
run classifier-free guidance as two forwards of batch 1, so one forward is one of them.

    python3 benchmarks/whole_model.py --shapes sd35m_transformer_1024,wan_t2v_480p_81f_10blocks --out ...

Modes: ``stock`` (AttnProcessor2_0 / JointAttnProcessor2_0 / FluxAttnProcessor /
QwenDoubleStreamAttnProcessor2_0 / WanAttnProcessor),
``sink_score`` (SinkSuppressProcessor(k=1)), ``sink_value`` (path="value"), ``random``
(k=1, control="random", the default device generator), ``shared`` (k=1, select="shared"),
``trace_only`` (k=0 with a SinkTracer: path "none", the key mass of every call recorded),
``sink_traced`` (sink k=1 with a SinkTracer: what tracing adds to an intervened run is its
ratio to ``sink_score``), and
each as ``<mode>_graph``: one forward captured in a CUDA graph after an eager warm-up, the
replay timed. Times are the median of ``--reps`` forwards (CUDA events); ``ratio`` is to
``stock`` (eager modes) or ``stock_graph`` (graphed modes) of the same shape in the same run.
The denoising loop runs eager only (its graph capture belongs to the study runner).

The JSON records the GPU, torch / triton / diffusers versions, the commit (SINKATTN_COMMIT or
git), the date, the settings and the autotuner's choices; benchmarks/report.py renders it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = ("sd3m_transformer_1024", "flux_transformer_1024", "sdxl_unet_1024", "sd3m_denoise_28")
# Issue 17's rows: the other model families, at full width (``--shapes`` takes them; the default
# run stays the four above).
FAMILY_SHAPES = ("sd35m_transformer_1024", "sd35l_transformer_1024", "pixart_sigma_transformer_1024",
                 "qwen_transformer_1024_12blocks", "wan_t2v_480p_81f_10blocks")
MODES = ("stock", "sink_score", "sink_value", "random", "shared", "trace_only", "sink_traced")
TRACED_MODES = ("trace_only", "sink_traced")  # not run in the denoising loop

SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
FLUX_FULL_WIDTH = dict(patch_size=1, in_channels=64, num_layers=4, num_single_layers=8, attention_head_dim=128,
                       num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                       guidance_embeds=False, axes_dims_rope=(16, 56, 56))
SDXL_BASE = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)

# The published transformer configs of the other families' hub ids (MODEL_FAMILIES), full depth;
# the family shapes above cut the depth of Qwen-Image and Wan (their builders' num_layers).
# SD3.5: huggingface/diffusers scripts/convert_sd3_to_diffusers.py, which makes the diffusers config
# from an original checkpoint: num_attention_heads = num_layers, caption_projection_dim = the
# context_embedder's width (heads x 64), qk_norm "rms_norm" ("sd3.5 use qk norm"), the attn2
# layers read off the checkpoint ("(0, 1, ..., 12) for sd3.5": the medium one, MMDiT-X), and
# pos_embed_max_size 384 for "sd3.5 2b", 192 for "sd3.5 8b". diffusers' loaders/single_file_utils.py
# tells sd35_medium by a 9216 = 6 x 1536 wide adaLN (24 heads, so 24 blocks) and a pos_embed of
# 147456 = 384^2, and sd35_large by its joint_blocks.37 (38 blocks, so 38 heads: 2432 wide). That
# the large checkpoint has no attn2 comes from third-party copies of its transformer/config.json
# (dual_attention_layers absent or []), not from a diffusers file.
SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS: huggingface/diffusers scripts/convert_pixart_sigma_to_diffusers.py
# ("PixArt XL/2": 28 layers, 16 heads x 72, cross_attention_dim 1152, caption_channels 4096 (T5),
# in 4 / out 8 (learned sigma), patch 2, sample_size = 1024 // 8, interpolation_scale 2 at 1024,
# use_additional_conditions off: PixArtSigmaPipeline passes resolution and aspect_ratio None).
PIXART_SIGMA = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                    cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
                    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                    norm_eps=1e-6, caption_channels=4096, sample_size=128, patch_size=2, interpolation_scale=2,
                    use_additional_conditions=False)
# Qwen/Qwen-Image: the defaults of diffusers' QwenImageTransformer2DModel (0.42, models/transformers/
# transformer_qwenimage.py), which are the released transformer/config.json: 60 double-stream
# blocks of 24 heads x 128 (exo-explore/exo src/exo/worker/engines/image/models/qwen/config.py:
# "60 joint-style blocks", "24 heads * 128 dim = 3072"), text width 3584 (Qwen2.5-VL-7B), 64 input
# channels (16 latent channels packed 2x2), RoPE axes (16, 56, 56).
QWEN_IMAGE = dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                  num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56))
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers: huggingface/diffusers scripts/convert_wan_to_diffusers.py
# ("Wan-T2V-1.3B": 30 layers, 12 heads x 128, ffn_dim 8960, freq_dim 256, text_dim 4096 (UMT5-XXL),
# patch (1, 2, 2), qk_norm "rms_norm_across_heads", cross_attn_norm, 16 latent channels).
WAN_T2V_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", eps=1e-6)
# Depths of the family shapes that are cut (full width, real tokens; the cost per block is the same).
QWEN_BENCH_LAYERS = 12
WAN_BENCH_LAYERS = 10


# -- models and their inputs -------------------------------------------------------------------

def _built(cls, config: dict, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(**config)
    return model.to(dtype).eval().requires_grad_(False)


def sd3_medium(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): batch 2 (classifier-free guidance), 1024px.
    ``overrides``: config keys changed in the real-width config (tests/processors/
    test_real_size.py builds one or two blocks: num_layers=2); ignored with ``tiny``."""
    from diffusers import SD3Transformer2DModel
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from sinkattn import tiny as tiny_models

    if tiny:
        model = tiny_models.tiny_sd3_transformer().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=2, size=16)
    else:
        model = _built(SD3Transformer2DModel, {**SD3_MEDIUM, **overrides}, device, dtype)
        inputs = _sd3_inputs()
    return model, _on(inputs, device, dtype), JointAttnProcessor2_0()


def _sd3_inputs():
    """SD3 and SD3.5 at 1024px with classifier-free guidance: batch 2 of 128 x 128 latents
    (64 x 64 = 4096 image tokens) and 77 CLIP + 256 T5 = 333 text tokens."""
    return dict(hidden_states=torch.randn(2, 16, 128, 128), encoder_hidden_states=torch.randn(2, 333, 4096),
                pooled_projections=torch.randn(2, 2048), timestep=torch.full((2,), 500.0))


def sd35_medium(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): SD3.5-medium (MMDiT-X: attn2 in blocks 0-12, RMS
    QK-norm), batch 2, 1024px, 333 text tokens. ``overrides`` as :func:`sd3_medium`."""
    return _sd35(SD35_MEDIUM, "tiny_sd35_transformer", device, dtype, tiny, overrides)


def sd35_large(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): SD3.5-large (38 blocks of 38 heads x 64, RMS
    QK-norm), batch 2, 1024px, 333 text tokens. ``overrides`` as :func:`sd3_medium`."""
    return _sd35(SD35_LARGE, "tiny_sd35_large_transformer", device, dtype, tiny, overrides)


def _sd35(config, tiny_builder, device, dtype, tiny, overrides):
    from diffusers import SD3Transformer2DModel
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from sinkattn import tiny as tiny_models

    if tiny:
        model = getattr(tiny_models, tiny_builder)().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=2, size=16)
    else:
        model = _built(SD3Transformer2DModel, {**config, **overrides}, device, dtype)
        inputs = _sd3_inputs()
    return model, _on(inputs, device, dtype), JointAttnProcessor2_0()


def flux_full_width(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): batch 1, 1024px (64 x 64 packed tokens), 512 text tokens.
    ``overrides`` as :func:`sd3_medium`."""
    from diffusers import FluxTransformer2DModel
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    from sinkattn import tiny as tiny_models

    if tiny:
        model = tiny_models.tiny_flux_transformer().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=1, size=16)
    else:
        model = _built(FluxTransformer2DModel, {**FLUX_FULL_WIDTH, **overrides}, device, dtype)
        ids = torch.zeros(64, 64, 3)
        ids[..., 1] = torch.arange(64)[:, None]
        ids[..., 2] = torch.arange(64)[None, :]
        inputs = dict(hidden_states=torch.randn(1, 4096, 64), encoder_hidden_states=torch.randn(1, 512, 4096),
                      pooled_projections=torch.randn(1, 768), timestep=torch.full((1,), 0.5),
                      img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(512, 3))
    return model, _on(inputs, device, dtype), FluxAttnProcessor()


def sdxl_base(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): the SDXL base UNet, batch 2, 1024px (128 x 128 latents).
    ``overrides`` as :func:`sd3_medium`."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sinkattn import tiny as tiny_models

    if tiny:
        model = tiny_models.tiny_sdxl_unet().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=2, size=16)
    else:
        model = _built(UNet2DConditionModel, {**SDXL_BASE, **overrides}, device, dtype)
        inputs = dict(sample=torch.randn(2, 4, 128, 128), timestep=torch.full((2,), 500.0),
                      encoder_hidden_states=torch.randn(2, 77, 2048),
                      added_cond_kwargs={"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)})
    return model, _on(inputs, device, dtype), AttnProcessor2_0()


PIXART_TEXT_KEEP = (120, 48)  # T5 tokens of 300 that each row's padding mask keeps (two prompts)


def pixart_sigma(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): PixArt-Sigma XL at 1024px, batch 2: 4096 image tokens
    (128 x 128 latents, patch 2), self-attention and cross-attention to 300 T5 tokens (the
    pipeline's max_sequence_length) under their padding mask (rows keep PIXART_TEXT_KEEP).
    ``overrides`` as :func:`sd3_medium`."""
    from diffusers import PixArtTransformer2DModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from sinkattn import tiny as tiny_models

    if tiny:
        model = tiny_models.tiny_pixart_transformer().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=2, size=16)
    else:
        model = _built(PixArtTransformer2DModel, {**PIXART_SIGMA, **overrides}, device, dtype)
        mask = torch.zeros(2, 300, dtype=torch.long)
        for row, keep in enumerate(PIXART_TEXT_KEEP):
            mask[row, :keep] = 1
        inputs = dict(hidden_states=torch.randn(2, 4, 128, 128), encoder_hidden_states=torch.randn(2, 300, 4096),
                      encoder_attention_mask=mask, timestep=torch.full((2,), 500.0),
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return model, _on(inputs, device, dtype), AttnProcessor2_0()


QWEN_TEXT_TOKENS = 128  # a long prompt: the pipeline keeps it unpadded (up to 512 tokens)


def qwen_image(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): Qwen-Image at full width, 1024px, batch 1 (the
    pipeline runs the two guidance branches as separate forwards): QWEN_TEXT_TOKENS text tokens
    then 64 x 64 = 4096 packed image tokens in joint attention, no text mask (one unpadded
    prompt). Depth: the published 60 blocks unless ``overrides`` (num_layers=...) say else."""
    from diffusers import QwenImageTransformer2DModel
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

    from sinkattn import tiny as tiny_models

    if tiny:
        model = tiny_models.tiny_qwenimage_transformer().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=1, size=16)
    else:
        model = _built(QwenImageTransformer2DModel, {**QWEN_IMAGE, **overrides}, device, dtype)
        inputs = dict(hidden_states=torch.randn(1, 4096, 64),
                      encoder_hidden_states=torch.randn(1, QWEN_TEXT_TOKENS, 3584),
                      timestep=torch.full((1,), 0.5), img_shapes=[[(1, 64, 64)]])
    return model, _on(inputs, device, dtype), QwenDoubleStreamAttnProcessor2_0()


def wan_t2v(device, dtype, tiny: bool, **overrides):
    """(model, inputs, stock processor): Wan 2.1 T2V-1.3B at full width, batch 1 (separate
    guidance forwards), an 81-frame 480x832 video: latents 16 x 21 x 60 x 104 (VAE factors 4 in
    time, 8 in space), patch (1, 2, 2): 21 x 30 x 52 = 32760 tokens of self-attention, and
    cross-attention to 512 UMT5 tokens (zero-padded, no mask). Depth: the published 30 blocks
    unless ``overrides`` (num_layers=...) say else."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    from sinkattn import tiny as tiny_models

    if tiny:
        model = tiny_models.tiny_wan_transformer().to(device, dtype)
        inputs = tiny_models.tiny_inputs(model, batch=1, size=16)
    else:
        model = _built(WanTransformer3DModel, {**WAN_T2V_1_3B, **overrides}, device, dtype)
        inputs = dict(hidden_states=torch.randn(1, 16, 21, 60, 104), encoder_hidden_states=torch.randn(1, 512, 4096),
                      timestep=torch.full((1,), 500.0))
    return model, _on(inputs, device, dtype), WanAttnProcessor()


def _on(inputs, device, dtype):
    def move(x):
        if isinstance(x, dict):
            return {k: move(v) for k, v in x.items()}
        if isinstance(x, torch.Tensor):
            return x.to(device, dtype if x.is_floating_point() else x.dtype)
        return x
    return move(inputs)


def sd3_medium_pipeline(device, dtype, tiny: bool):
    """A StableDiffusion3Pipeline around the SD3-medium-sized transformer, with one-layer text
    encoders of the widths it expects (CLIP 768 and 1280, T5 4096) and a 4-level VAE of a
    few channels (latent factor 8; never run: the loop returns latents)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from sinkattn import tiny as tiny_models

    if tiny:
        return tiny_models.tiny_sd3_pipeline().to(device)
    tokenizer = tiny_models.tiny_tokenizer()
    vocab = len(tokenizer)

    def clip(hidden):
        torch.manual_seed(hidden)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=256, num_attention_heads=hidden // 64,
            num_hidden_layers=1, projection_dim=hidden, max_position_embeddings=77, bos_token_id=2, eos_token_id=3,
            pad_token_id=0)).eval()

    torch.manual_seed(1)
    t5 = T5EncoderModel(T5Config(vocab_size=vocab, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=8,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3)).eval()
    torch.manual_seed(2)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=8, shift_factor=0.0, scaling_factor=1.0).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=_built(SD3Transformer2DModel, SD3_MEDIUM, device, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(768), tokenizer=tokenizer, text_encoder_2=clip(1280),
        tokenizer_2=tiny_models.tiny_tokenizer(), text_encoder_3=t5,
        tokenizer_3=tiny_models.tiny_tokenizer(model_max_length=256))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


BUILDERS = {"sd3m_transformer_1024": sd3_medium, "flux_transformer_1024": flux_full_width,
            "sdxl_unet_1024": sdxl_base,
            "sd35m_transformer_1024": sd35_medium, "sd35l_transformer_1024": sd35_large,
            "pixart_sigma_transformer_1024": pixart_sigma,
            "qwen_transformer_1024_12blocks": functools.partial(qwen_image, num_layers=QWEN_BENCH_LAYERS),
            "wan_t2v_480p_81f_10blocks": functools.partial(wan_t2v, num_layers=WAN_BENCH_LAYERS)}
# The builder of every family of MODEL_FAMILIES (tests/processors/test_real_size.py's names:
# those of tests/processors/test_equivalence.py), at the published depth unless told num_layers.
FAMILY_BUILDERS = {"sd3": sd3_medium, "sd35": sd35_medium, "sd35-large": sd35_large, "flux": flux_full_width,
                   "sdxl": sdxl_base, "pixart": pixart_sigma, "qwen": qwen_image, "wan": wan_t2v}


def processor(mode: str, stock):
    """The attention processor of a mode (one instance for every layer)."""
    from sinkattn.processors import SinkSuppressProcessor
    from sinkattn.tracing import SinkTracer

    if mode == "stock":
        return stock
    return {"sink_score": lambda: SinkSuppressProcessor(k=1),
            "sink_value": lambda: SinkSuppressProcessor(k=1, path="value"),
            "random": lambda: SinkSuppressProcessor(k=1, control="random"),
            "shared": lambda: SinkSuppressProcessor(k=1, select="shared"),
            "trace_only": lambda: SinkSuppressProcessor(k=0, tracer=SinkTracer()),
            "sink_traced": lambda: SinkSuppressProcessor(k=1, tracer=SinkTracer())}[mode]()


# -- timing ------------------------------------------------------------------------------------

def _timed(fn, reps: int, cuda: bool) -> list[float]:
    """ms of each of ``reps`` calls: CUDA events on a GPU, the wall clock elsewhere."""
    times = []
    for _ in range(reps):
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _graphed(forward, warmup: int):
    """``forward`` captured in a CUDA graph (warmed up on a side stream first, as
    torch.cuda.graphs asks): returns (replay, graph)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay, graph


def bench_model(name: str, modes, reps: int, warmup: int, graphs: bool, device, dtype, tiny: bool) -> list[dict]:
    model, inputs, stock = BUILDERS[name](device, dtype, tiny)
    cuda = device.type == "cuda"
    rows = []

    def forward():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]

    for mode in modes:
        model.set_attn_processor(processor(mode, stock))
        tracer = getattr(model.attn_processors[next(iter(model.attn_processors))], "tracer", None)
        for graphed in ([False, True] if graphs and cuda else [False]):
            label = f"{mode}_graph" if graphed else mode
            row = {"shape": name, "mode": label}
            try:
                for _ in range(warmup):
                    forward()
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                graph = None
                if graphed:
                    if tracer is not None:
                        tracer.flush()
                    replay, graph = _graphed(forward, warmup)
                    for _ in range(warmup):
                        replay()
                    times = _timed(replay, reps, cuda)
                else:
                    times = _timed(forward, reps, cuda)
                row.update(ms=statistics.median(times), times_ms=[round(t, 4) for t in times], reps=reps)
                if cuda:
                    row["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
                del graph
            except Exception as error:  # noqa: BLE001 - a mode that cannot run is reported, not fatal
                row.update(ms=float("nan"), error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
            rows.append(row)
            _say(row)
            if cuda:
                torch.cuda.empty_cache()
    del model, inputs
    _free(device)
    return rows


def bench_denoise(modes, reps: int, device, dtype, tiny: bool, graphs: bool = True) -> list[dict]:
    """The whole 28-step loop (classifier-free guidance: the transformer runs on batch 2),
    stock against the sink modes; latents out, no VAE decode. Eager, and (``graphs`` on
    CUDA) with the transformer's forward replayed from CUDA graphs as the runner does it
    (sinkattn.graphs: first forward eager, second captured, the rest replayed; the untimed
    warm-up loop captures, so the timed loops replay every step)."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from sinkattn.graphs import ForwardGraphs, replay_forward

    pipe = sd3_medium_pipeline(device, dtype, tiny)
    size = 32 if tiny else 1024
    cuda = device.type == "cuda"
    rows = []

    def generate():
        return pipe("a photo of a red cat", height=size, width=size, num_inference_steps=28, guidance_scale=7.0,
                    output_type="latent", max_sequence_length=8 if tiny else 256,
                    generator=torch.Generator(device).manual_seed(0))

    for mode in modes:
        if mode in TRACED_MODES:
            continue  # a 28-step trace is the runner's measurement, not this one's
        for graphed in ([False, True] if graphs and cuda else [False]):
            row = {"shape": "sd3m_denoise_28", "mode": f"{mode}_graph" if graphed else mode}
            try:
                pipe.transformer.set_attn_processor(processor(mode, JointAttnProcessor2_0()))
                with replay_forward(pipe.transformer, ForwardGraphs()) if graphed else contextlib.nullcontext():
                    generate()
                    times = _timed(generate, reps, cuda)
                row.update(ms=statistics.median(times), times_ms=[round(t, 3) for t in times], reps=reps)
            except Exception as error:  # noqa: BLE001
                row.update(ms=float("nan"), error=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
            rows.append(row)
            _say(row)
            if cuda:
                torch.cuda.empty_cache()
    del pipe
    _free(device)
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    """ratio = ms / ms of ``stock`` (eager) or ``stock_graph`` (graphed) of the same shape."""
    base = {(r["shape"], r["mode"]): r["ms"] for r in rows}
    for r in rows:
        stock = base.get((r["shape"], "stock_graph" if r["mode"].endswith("_graph") else "stock"))
        r["baseline_ms"] = stock
        r["ratio"] = r["ms"] / stock if stock and r["ms"] == r["ms"] else None
    return rows


def _say(row):
    extra = f"  ({row['error']})" if row.get("error") else ""
    print(f"{row['shape']:24s} {row['mode']:18s} {row['ms']:10.3f} ms{extra}", flush=True)


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def meta(device, tiny: bool) -> dict:
    import diffusers

    from sinkattn import settings
    from sinkattn.kernels import configs

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    s = settings.current()
    return {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "triton": triton_version, "diffusers": diffusers.__version__,
            "cuda": torch.version.cuda, "tiny": tiny,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": os.environ.get("SINKATTN_COMMIT", commit),
            "settings": {"route": s.route, "autotune": s.autotune, "short_keys": s.short_keys},
            "configs": configs.chosen_configs() if triton_version else {}}


def merge(paths: list[Path], out: Path) -> None:
    """Several runs' JSONs (one model per device call) into one: rows in the given order,
    ratios as recorded (each run measured its own stock), the first run's meta with the
    others' dates and commits listed."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    meta = dict(runs[0]["meta"])
    meta["merged"] = [{"file": str(p), "date": r["meta"]["date"], "commit": r["meta"].get("commit"),
                       "shapes": sorted({row["shape"] for row in r["rows"]})} for p, r in zip(paths, runs)]
    out.write_text(json.dumps({"meta": meta, "rows": [row for r in runs for row in r["rows"]]}, indent=1))
    print(f"wrote {out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge these runs' JSONs into --out and exit")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "whole_model_h200.json"))
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="comma-separated, of: " + ", ".join(SHAPES + FAMILY_SHAPES) + " (default: the first four)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--reps", type=int, default=None, help="timed forwards per mode (default 10; --tiny 2)")
    parser.add_argument("--denoise-reps", type=int, default=None, help="timed loops per mode (default 3; --tiny 1)")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA graph rows")
    parser.add_argument("--tiny", action="store_true", help="tiny configs from sinkattn.tiny, float32, on the CPU "
                                                            "unless CUDA is there (a smoke run)")
    args = parser.parse_args(argv)
    if args.merge:
        merge([Path(p) for p in args.merge], Path(args.out))
        return
    shapes = [s for s in args.shapes.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for name, known in ((shapes, SHAPES + FAMILY_SHAPES), (modes, MODES)):
        unknown = set(name) - set(known)
        if unknown:
            parser.error(f"unknown {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    if "stock" not in modes:
        modes = ["stock", *modes]  # every ratio needs it
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        sys.exit("benchmarks/whole_model.py needs a CUDA device (or --tiny)")
    dtype = torch.float32 if args.tiny and device.type != "cuda" else torch.bfloat16
    reps = args.reps or (2 if args.tiny else 10)
    denoise_reps = args.denoise_reps or (1 if args.tiny else 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def save():  # after every shape, so an interrupted run keeps what it measured
        out.write_text(json.dumps({"meta": meta(device, args.tiny), "rows": with_ratios(rows)}, indent=1))

    if device.type != "cuda":
        import warnings

        warnings.filterwarnings("ignore", message="sinkattn: no Triton kernels", category=RuntimeWarning)
    for name in shapes:
        if name == "sd3m_denoise_28":
            rows += bench_denoise(modes, denoise_reps, device, dtype, args.tiny, not args.no_graphs)
        else:
            rows += bench_model(name, modes, reps, 1 if args.tiny else 3, not args.no_graphs, device, dtype, args.tiny)
        save()
    for r in with_ratios(rows):
        print(f"{r['shape']:24s} {r['mode']:18s} x{r['ratio'] if r['ratio'] is None else round(r['ratio'], 3)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
