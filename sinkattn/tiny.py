"""Tiny random diffusers models and pipelines, built from config: no download, seeded,
a few seconds on a CPU. For tests, the offline example and the runner's "tiny" preset.

One transformer and one whole pipeline per model family of
:data:`sinkattn.processors.families.MODEL_FAMILIES` (its ``tiny`` column names the
pipeline builder): SD3, SD3.5-medium (MMDiT-X: dual attention, RMS QK-norm), SD3.5-large
(RMS QK-norm), Flux, SDXL, PixArt-Sigma, Qwen-Image and Wan 2.1 text-to-video. Every part
is the real diffusers / transformers class with a small config: text encoders (CLIP, T5,
UMT5, Qwen2.5-VL), VAEs (AutoencoderKL, the causal 3-D AutoencoderKLQwenImage and
AutoencoderKLWan), schedulers.

Head dims are 64 (as in SD3, SDXL) so the same models run on the Triton kernels on a GPU.
Tokenizers are word-level vocabularies built in memory (lower-cased words, punctuation
split), so traced text sinks read as words.
"""

from __future__ import annotations

import torch

__all__ = [
    "tiny_tokenizer", "tiny_sd3_transformer", "tiny_sd35_transformer", "tiny_sd35_large_transformer",
    "tiny_flux_transformer", "tiny_sdxl_unet", "tiny_pixart_transformer", "tiny_qwenimage_transformer",
    "tiny_wan_transformer", "tiny_sd3_pipeline", "tiny_sd35_pipeline", "tiny_sd35_large_pipeline",
    "tiny_sdxl_pipeline", "tiny_flux_pipeline", "tiny_pixart_pipeline", "tiny_qwenimage_pipeline",
    "tiny_wan_pipeline", "tiny_inputs",
]

HEAD_DIM = 64

_WORDS = """a an the of and with on in to at by for from is are photo picture image painting
drawing render of one two three four five six some many red orange yellow green blue purple
pink brown black white gray grey gold silver dark light bright big small large tiny tall short
old new young cat dog bird horse cow sheep elephant bear zebra giraffe person man woman child
boy girl people car truck bus train bicycle motorcycle airplane boat bench chair couch bed
table tv laptop phone book clock vase cup bottle bowl banana apple orange sandwich pizza cake
donut broccoli carrot hot umbrella bag tie suitcase kite skateboard surfboard tennis racket
ball baseball bat glove frisbee skis snowboard sink toilet oven toaster microwave refrigerator
scissors teddy hair drier toothbrush fire hydrant stop sign parking meter traffic light
left right above below behind front next near under over top bottom side sitting standing
running flying sky sea beach mountain forest city street house room garden field river lake
snow rain sun moon night day morning evening astronaut riding wearing holding eating
, . ! ? ' - : ;""".split()


def tiny_tokenizer(model_max_length: int = 77, extra_special_tokens: tuple[str, ...] = ()):
    """A word-level PreTrainedTokenizerFast (lower-cased, punctuation split, unknown words
    to <unk>) with pad/bos/eos tokens, built in memory. ``extra_special_tokens`` are kept
    whole (Qwen's chat markers "<|im_start|>", "<|im_end|>")."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + _WORDS + list(extra_special_tokens)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    tok.decoder = decoders.WordPiece()
    if extra_special_tokens:
        tok.add_special_tokens(list(extra_special_tokens))
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, pad_token="<pad>",
                                   unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_sd3_transformer(seed: int = 0, num_layers: int = 2, heads: int = 2, joint_attention_dim: int = 64,
                         pooled_projection_dim: int = 64, sample_size: int = 32, **overrides):
    """SD3Transformer2DModel: ``num_layers`` joint blocks (the last with context_pre_only),
    patch 2, 16 latent channels, head dim 64."""
    from diffusers import SD3Transformer2DModel

    _seeded(seed)
    config = dict(sample_size=sample_size, patch_size=2, in_channels=16, out_channels=16, num_layers=num_layers,
                  attention_head_dim=HEAD_DIM, num_attention_heads=heads, joint_attention_dim=joint_attention_dim,
                  caption_projection_dim=heads * HEAD_DIM, pooled_projection_dim=pooled_projection_dim,
                  pos_embed_max_size=max(sample_size, 32))
    config.update(overrides)
    return SD3Transformer2DModel(**config).eval()


def tiny_sd35_transformer(seed: int = 0, num_layers: int = 2, **overrides):
    """SD3.5-medium-shaped (MMDiT-X): dual attention (block 0 has an extra image-only
    self-attention, attn2, as blocks 0-12 of SD3.5-medium) and RMS QK-norm on both streams."""
    overrides.setdefault("qk_norm", "rms_norm")
    overrides.setdefault("dual_attention_layers", (0,))
    return tiny_sd3_transformer(seed=seed, num_layers=num_layers, **overrides)


def tiny_sd35_large_transformer(seed: int = 0, num_layers: int = 2, **overrides):
    """SD3.5-large-shaped: RMS QK-norm on both streams (norm_q, norm_k, norm_added_q,
    norm_added_k), no dual attention."""
    overrides.setdefault("qk_norm", "rms_norm")
    return tiny_sd3_transformer(seed=seed, num_layers=num_layers, **overrides)


def tiny_flux_transformer(seed: int = 0, num_layers: int = 1, num_single_layers: int = 2, heads: int = 2,
                          joint_attention_dim: int = 32, pooled_projection_dim: int = 32, **overrides):
    """FluxTransformer2DModel: double- and single-stream blocks, RoPE over (16, 24, 24)."""
    from diffusers import FluxTransformer2DModel

    _seeded(seed)
    config = dict(patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers,
                  attention_head_dim=HEAD_DIM, num_attention_heads=heads, joint_attention_dim=joint_attention_dim,
                  pooled_projection_dim=pooled_projection_dim, guidance_embeds=False, axes_dims_rope=(16, 24, 24))
    config.update(overrides)
    return FluxTransformer2DModel(**config).eval()


def tiny_sdxl_unet(seed: int = 0, cross_attention_dim: int = 64, **overrides):
    """UNet2DConditionModel in the SDXL layout: text_time added conditioning, linear
    projections, cross-attention in the lower level and the mid block, head dim 64."""
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    config = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(64, 128), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                  transformer_layers_per_block=(1, 1), cross_attention_dim=cross_attention_dim,
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32)
    config.update(overrides)
    return UNet2DConditionModel(**config).eval()


def tiny_pixart_transformer(seed: int = 0, num_layers: int = 2, heads: int = 2, caption_channels: int = 64,
                            **overrides):
    """PixArtTransformer2DModel in the PixArt-Sigma layout: AdaLN-single, self-attention and
    cross-attention to T5 text (with its padding mask) per block, learned sigma (8 output
    channels), patch 2, no additional (resolution) conditions."""
    from diffusers import PixArtTransformer2DModel

    _seeded(seed)
    config = dict(num_attention_heads=heads, attention_head_dim=HEAD_DIM, in_channels=4, out_channels=8,
                  num_layers=num_layers, cross_attention_dim=heads * HEAD_DIM, caption_channels=caption_channels,
                  sample_size=16, patch_size=2, norm_type="ada_norm_single", use_additional_conditions=False,
                  interpolation_scale=1)
    config.update(overrides)
    return PixArtTransformer2DModel(**config).eval()


def tiny_qwenimage_transformer(seed: int = 0, num_layers: int = 2, heads: int = 2, joint_attention_dim: int = 32,
                               **overrides):
    """QwenImageTransformer2DModel: double-stream blocks, joint attention [text, image] with
    RMS QK-norm, complex RoPE on both streams (axes 16, 24, 24) and the text padding mask;
    16 input channels (4 latent channels packed 2x2)."""
    from diffusers import QwenImageTransformer2DModel

    _seeded(seed)
    config = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=HEAD_DIM,
                  num_attention_heads=heads, joint_attention_dim=joint_attention_dim, axes_dims_rope=(16, 24, 24))
    config.update(overrides)
    return QwenImageTransformer2DModel(**config).eval()


def tiny_wan_transformer(seed: int = 0, num_layers: int = 2, heads: int = 2, text_dim: int = 32, **overrides):
    """WanTransformer3DModel in the Wan 2.1 text-to-video layout: per block, self-attention
    over the (frame, row, col) token grid with 3-D RoPE and RMS QK-norm across heads, then
    cross-attention to the UMT5 text; patch (1, 2, 2), 4 latent channels."""
    from diffusers import WanTransformer3DModel

    _seeded(seed)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=HEAD_DIM, in_channels=4,
                  out_channels=4, text_dim=text_dim, freq_dim=32, ffn_dim=128, num_layers=num_layers,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    config.update(overrides)
    return WanTransformer3DModel(**config).eval()


def _clip(seed: int, with_projection: bool, vocab_size: int, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    _seeded(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, projection_dim=32, max_position_embeddings=77,
                            bos_token_id=2, eos_token_id=3, pad_token_id=0, hidden_act="gelu")
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int, latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    _seeded(seed)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=32, **extra).eval()


def _t5(seed: int, vocab_size: int, d_model: int = 64, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    _seeded(seed)
    config_cls, cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    return cls(config_cls(vocab_size=vocab_size, d_model=d_model, d_kv=16, d_ff=64, num_layers=1, num_heads=4,
                          relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3,
                          decoder_start_token_id=0)).eval()


def tiny_sd3_pipeline(seed: int = 0, t5_tokens: int = 32, dual_attention: bool = False, transformer=None):
    """A whole StableDiffusion3Pipeline: two CLIP text encoders and a T5 encoder from config,
    in-memory tokenizers, a 2-level VAE (latents at half the image size), the tiny SD3
    transformer (SD3.5-style with ``dual_attention``), flow-matching Euler scheduler.

    ``pipe(prompt, height=64, width=64, num_inference_steps=2, max_sequence_length=t5_tokens)``
    makes a 64x64 image in about a second on a CPU; the image is a function of the seed
    (``generator=torch.Generator().manual_seed(s)``) and this function's ``seed``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    _seeded(seed + 3)
    t5 = T5EncoderModel(T5Config(vocab_size=vocab, d_model=64, d_kv=16, d_ff=64, num_layers=1, num_heads=4,
                                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3)).eval()
    build = tiny_sd35_transformer if dual_attention else tiny_sd3_transformer
    pipe = StableDiffusion3Pipeline(
        transformer=build(seed=seed) if transformer is None else transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(seed + 4, 16, shift_factor=0.0, scaling_factor=1.0),
        text_encoder=_clip(seed + 1, True, vocab), tokenizer=tokenizer,
        text_encoder_2=_clip(seed + 2, True, vocab), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=t5, tokenizer_3=tiny_tokenizer(model_max_length=t5_tokens),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd35_pipeline(seed: int = 0, t5_tokens: int = 32):
    """A whole StableDiffusion3Pipeline around the SD3.5-medium-shaped transformer (MMDiT-X:
    dual attention, RMS QK-norm); otherwise as :func:`tiny_sd3_pipeline`."""
    return tiny_sd3_pipeline(seed=seed, t5_tokens=t5_tokens, transformer=tiny_sd35_transformer(seed=seed))


def tiny_sd35_large_pipeline(seed: int = 0, t5_tokens: int = 32):
    """A whole StableDiffusion3Pipeline around the SD3.5-large-shaped transformer (RMS
    QK-norm on both streams); otherwise as :func:`tiny_sd3_pipeline`."""
    return tiny_sd3_pipeline(seed=seed, t5_tokens=t5_tokens, transformer=tiny_sd35_large_transformer(seed=seed))


def tiny_flux_pipeline(seed: int = 0, t5_tokens: int = 32):
    """A whole FluxPipeline: CLIP (pooled, 77 tokens) and T5 text encoders from config,
    in-memory tokenizers, the tiny Flux transformer (16 input channels: 4 latent channels
    packed 2x2), a 2-level VAE with 4 latent channels, flow-matching Euler scheduler.

    ``pipe(prompt, height=64, width=64, num_inference_steps=2, max_sequence_length=16)``;
    the height and width must be multiples of 4 (VAE factor 2, times the 2x2 packing)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    pipe = FluxPipeline(
        transformer=tiny_flux_transformer(seed=seed, joint_attention_dim=64, pooled_projection_dim=32),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(seed + 4, 4, shift_factor=0.0, scaling_factor=1.0),
        text_encoder=_clip(seed + 1, False, vocab), tokenizer=tokenizer,
        text_encoder_2=_t5(seed + 3, vocab), tokenizer_2=tiny_tokenizer(model_max_length=t5_tokens),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pixart_pipeline(seed: int = 0, t5_tokens: int = 32):
    """A whole PixArtSigmaPipeline: a T5 encoder from config with an in-memory tokenizer
    (its padding mask reaches the transformer's cross-attention), the tiny PixArt
    transformer, a 2-level VAE, DPM-Solver++ scheduler.

    ``pipe(prompt, height=64, width=64, num_inference_steps=2, max_sequence_length=16,
    use_resolution_binning=False, clean_caption=False)``: resolution binning only knows the
    sample sizes of the released models (:data:`MODEL_FAMILIES` passes both options)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    tokenizer = tiny_tokenizer(model_max_length=t5_tokens)
    pipe = PixArtSigmaPipeline(
        transformer=tiny_pixart_transformer(seed=seed, caption_channels=64),
        scheduler=DPMSolverMultistepScheduler(),
        vae=_vae(seed + 4, 4),
        text_encoder=_t5(seed + 3, len(tokenizer)), tokenizer=tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


QWEN_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")


def _qwen_vl(seed: int, vocab_size: int, hidden: int = 32):
    """Qwen2.5-VL (the Qwen-Image text encoder) from config: 1 text layer, a 1-block vision
    tower that is never called (prompts only); image/video token ids past the vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    _seeded(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           fullatt_block_indexes=[0]),
        image_token_id=vocab_size + 1, video_token_id=vocab_size + 2, vision_start_token_id=vocab_size + 3,
        vision_end_token_id=vocab_size + 4)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwenimage_pipeline(seed: int = 0):
    """A whole QwenImagePipeline: a Qwen2.5-VL text encoder from config, an in-memory
    tokenizer that keeps the chat markers whole, the tiny Qwen-Image transformer, the causal
    3-D AutoencoderKLQwenImage (1 downsampling level: factor 2, 4 latent channels),
    flow-matching Euler scheduler with dynamic shift. Outputs are finite from one step.

    The pipeline wraps the prompt in a chat template and drops its leading tokens (34 with
    the released tokenizer); the drop index is set to what this tokenizer makes of the
    same template, so the text tokens in attention are the prompt's words and the
    template's closing markers, as with the released model. Prompts are not padded: a
    batch of one has no text mask; prompts of different lengths in one batch do.

    ``pipe(prompt, height=64, width=64, num_inference_steps=2)`` (multiples of 4: VAE factor
    2, times the 2x2 packing)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    tokenizer = tiny_tokenizer(model_max_length=1024, extra_special_tokens=QWEN_CHAT_TOKENS)
    _seeded(seed + 4)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                 temperal_downsample=[False], latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
    # Qwen-Image's dynamic shift, without its shift_terminal (which divides 0 by 0 at one step).
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=16, max_image_seq_len=4096,
                                                time_shift_type="exponential")
    pipe = QwenImagePipeline(transformer=tiny_qwenimage_transformer(seed=seed, joint_attention_dim=32),
                             scheduler=scheduler, vae=vae, text_encoder=_qwen_vl(seed + 1, len(tokenizer)),
                             tokenizer=tokenizer)
    probe = tokenizer(pipe.prompt_template_encode.format("cat")).input_ids
    pipe.prompt_template_encode_start_idx = probe.index(tokenizer.convert_tokens_to_ids("cat"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_pipeline(seed: int = 0, t5_tokens: int = 32):
    """A whole WanPipeline (text to video): a UMT5 encoder from config with an in-memory
    tokenizer (prompt embeddings zero-padded to ``max_sequence_length``, no mask, as Wan
    does), the tiny Wan transformer, the causal 3-D AutoencoderKLWan (1 level: factor 2 in
    space and in time, 4 latent channels), flow-matching Euler scheduler.

    ``pipe(prompt, height=32, width=32, num_frames=5, num_inference_steps=2,
    max_sequence_length=16, output_type="pt").frames``: (1, 5, 3, 32, 32); 5 frames make 3
    latent frames (the first frame alone, then pairs), a 3 x 8 x 8 latent grid of 3 x 4 x 4
    tokens (patch 1 x 2 x 2)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = tiny_tokenizer(model_max_length=t5_tokens)
    _seeded(seed + 4)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=2,
                           scale_factor_spatial=2).eval()
    pipe = WanPipeline(transformer=tiny_wan_transformer(seed=seed, text_dim=64), vae=vae,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       text_encoder=_t5(seed + 3, len(tokenizer), umt5=True), tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0):
    """A whole StableDiffusionXLPipeline: CLIP (hidden 32) and CLIP-with-projection text
    encoders, in-memory tokenizers, the tiny SDXL UNet, a 2-level VAE, Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    pipe = StableDiffusionXLPipeline(
        unet=tiny_sdxl_unet(seed=seed),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         timestep_spacing="leading", steps_offset=1),
        vae=_vae(seed + 4, 4),
        text_encoder=_clip(seed + 1, False, vocab), tokenizer=tokenizer,
        text_encoder_2=_clip(seed + 2, True, vocab), tokenizer_2=tiny_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


SD3_TEXT_TOKENS = 7
FLUX_TEXT_TOKENS = 6
SDXL_TEXT_TOKENS = 9
PIXART_TEXT_TOKENS = 8   # of which the second batch row keeps PIXART_TEXT_KEEP (padding mask)
PIXART_TEXT_KEEP = 5
QWEN_TEXT_TOKENS = 6     # the second batch row keeps QWEN_TEXT_KEEP (encoder_hidden_states_mask)
QWEN_TEXT_KEEP = 4
WAN_TEXT_TOKENS = 10


def _keep_mask(batch: int, n: int, keep: int, masked: bool):
    """(batch, n) text mask: every row keeps all tokens but the last, which keeps ``keep``."""
    if not masked:
        return None
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[-1, keep:] = 0
    return mask


def tiny_inputs(model, batch: int = 2, size: int = 16, timestep: float | None = None, masked: bool = True) -> dict:
    """Random keyword inputs for one forward of a tiny model of this module: ``size`` is the
    latent side (Flux: a size/4 x size/3 token grid, to exercise non-square grids; Qwen-Image
    a size/4 x size/2 grid; Wan 3 latent frames of size/2 x size/4 at patch (1, 2, 2)).
    ``masked``: PixArt and Qwen-Image get a text padding mask on the last batch row."""
    name = type(model).__name__
    cfg = model.config
    if name == "SD3Transformer2DModel":
        return dict(hidden_states=torch.randn(batch, cfg.in_channels, size, size),
                    encoder_hidden_states=torch.randn(batch, SD3_TEXT_TOKENS, cfg.joint_attention_dim),
                    pooled_projections=torch.randn(batch, cfg.pooled_projection_dim),
                    timestep=torch.full((batch,), 500.0 if timestep is None else timestep))
    if name == "FluxTransformer2DModel":
        rows, cols = size // 4, size // 3
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = torch.arange(rows)[:, None]
        ids[..., 2] = torch.arange(cols)[None, :]
        return dict(hidden_states=torch.randn(batch, rows * cols, cfg.in_channels),
                    encoder_hidden_states=torch.randn(batch, FLUX_TEXT_TOKENS, cfg.joint_attention_dim),
                    pooled_projections=torch.randn(batch, cfg.pooled_projection_dim),
                    timestep=torch.full((batch,), 0.5 if timestep is None else timestep),
                    img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(FLUX_TEXT_TOKENS, 3))
    if name == "UNet2DConditionModel":
        return dict(sample=torch.randn(batch, cfg.in_channels, size // 2, size // 2),
                    timestep=torch.full((batch,), 500.0 if timestep is None else timestep),
                    encoder_hidden_states=torch.randn(batch, SDXL_TEXT_TOKENS, cfg.cross_attention_dim),
                    added_cond_kwargs={"text_embeds": torch.randn(batch, 32), "time_ids": torch.randn(batch, 6)})
    if name == "PixArtTransformer2DModel":
        return dict(hidden_states=torch.randn(batch, cfg.in_channels, size, size),
                    encoder_hidden_states=torch.randn(batch, PIXART_TEXT_TOKENS, cfg.caption_channels),
                    encoder_attention_mask=_keep_mask(batch, PIXART_TEXT_TOKENS, PIXART_TEXT_KEEP, masked),
                    timestep=torch.full((batch,), 500.0 if timestep is None else timestep),
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    if name == "QwenImageTransformer2DModel":
        rows, cols = size // 4, size // 2
        return dict(hidden_states=torch.randn(batch, rows * cols, cfg.in_channels),
                    encoder_hidden_states=torch.randn(batch, QWEN_TEXT_TOKENS, cfg.joint_attention_dim),
                    encoder_hidden_states_mask=_keep_mask(batch, QWEN_TEXT_TOKENS, QWEN_TEXT_KEEP, masked),
                    timestep=torch.full((batch,), 0.5 if timestep is None else timestep),
                    img_shapes=[[(1, rows, cols)]] * batch)
    if name == "WanTransformer3DModel":
        return dict(hidden_states=torch.randn(batch, cfg.in_channels, 3, size // 2, size // 4),
                    encoder_hidden_states=torch.randn(batch, WAN_TEXT_TOKENS, cfg.text_dim),
                    timestep=torch.full((batch,), 500.0 if timestep is None else timestep))
    raise TypeError(f"tiny_inputs: no inputs for {name}")
