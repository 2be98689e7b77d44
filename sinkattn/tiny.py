"""Tiny random diffusers models and pipelines, built from config: no download, seeded,
a few seconds on a CPU. For tests, the offline example and the runner's "tiny" preset.

Head dims are 64 (as in SD3, SDXL) so the same models run on the Triton kernels on a GPU.
Tokenizers are word-level vocabularies built in memory (lower-cased words, punctuation
split), so traced text sinks read as words.
"""

from __future__ import annotations

import torch

__all__ = [
    "tiny_tokenizer", "tiny_sd3_transformer", "tiny_sd35_transformer", "tiny_flux_transformer",
    "tiny_sdxl_unet", "tiny_sd3_pipeline", "tiny_sdxl_pipeline", "tiny_inputs",
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


def tiny_tokenizer(model_max_length: int = 77):
    """A word-level PreTrainedTokenizerFast (lower-cased, punctuation split, unknown words
    to <unk>) with pad/bos/eos tokens, built in memory."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + _WORDS))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])])
    tok.decoder = decoders.WordPiece()
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
    """SD3.5-style: dual attention (an image-only attn2 in block 0) and RMS QK-norm."""
    overrides.setdefault("qk_norm", "rms_norm")
    overrides.setdefault("dual_attention_layers", (0,))
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


def tiny_sd3_pipeline(seed: int = 0, t5_tokens: int = 32, dual_attention: bool = False):
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
        transformer=build(seed=seed),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(seed + 4, 16, shift_factor=0.0, scaling_factor=1.0),
        text_encoder=_clip(seed + 1, True, vocab), tokenizer=tokenizer,
        text_encoder_2=_clip(seed + 2, True, vocab), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=t5, tokenizer_3=tiny_tokenizer(model_max_length=t5_tokens),
    )
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


def tiny_inputs(model, batch: int = 2, size: int = 16, timestep: float | None = None) -> dict:
    """Random keyword inputs for one forward of a tiny model of this module: ``size`` is the
    latent side (Flux: a size/4 x size/3 token grid, to exercise non-square grids)."""
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
    raise TypeError(f"tiny_inputs: no inputs for {name}")
