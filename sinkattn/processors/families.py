"""The tables of what differs between model families: one row per kind of attention call
(how a module lays out its call, with the functions that project it and finish it), and one
row per model family (pipeline, denoiser, tokenizers, weights) that the runner reads.

Everything a processor does besides projections (the sink math, tracing, gating) lives in
:func:`sinkattn.processors.core.sink_core`. Each projection function below follows the stock
diffusers processor of its family line for line, so that with nothing to intervene the
result is the stock result bit for bit. Adding a family is a row here plus, when its
attention call is laid out in a new way, its two functions (prepare, finish).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .core import Tokens

__all__ = ["AttentionCall", "AttentionKind", "ATTENTION_KINDS", "ModelFamily", "MODEL_FAMILIES", "kind_of",
           "model_family", "tokens_for"]


@dataclass
class AttentionCall:
    """One call, projected: q, k, v (B, H, N, D) as diffusers' transposed views; how many
    text tokens the joint sequence holds (or, for cross-attention, that every key is text);
    the attention mask in SDPA form; and ``finish(out)`` -> the stock processor's return value."""

    q: Tensor
    k: Tensor
    v: Tensor
    n_text: int
    finish: Callable[[Tensor], Any]
    cross: bool = False
    mask: Tensor | None = None


@dataclass(frozen=True)
class AttentionKind:
    """How one kind of attention module lays out its call.

    text_first: order of the joint sequence (SD3 [image, text], Flux [text, image]).
    joint: text tokens are queries as well as keys (MM-DiT joint attention); False for
        self/cross-attention, where the queries are image tokens and cross-attention keys
        are all text.
    matches(attn): this row handles the module (rows are tried in order).
    prepare(processor, attn, hidden_states, encoder_hidden_states, attention_mask,
        image_rotary_emb, temb) -> AttentionCall: projections, QK-norm, RoPE, text length.
    """

    name: str
    text_first: bool
    joint: bool
    matches: Callable[[Any], bool]
    prepare: Callable[..., AttentionCall]


def tokens_for(kind: AttentionKind, n_q: int, n_k: int, n_text: int, cross: bool) -> tuple[Tokens, Tokens]:
    """Query and key token layouts of one call. ``n_text``: text tokens in the joint sequence
    (joint kinds); ``cross``: the keys come from the text encoder (cross-attention)."""
    if kind.joint:
        return Tokens(n_q, n_text, kind.text_first), Tokens(n_k, n_text, kind.text_first)
    return Tokens(n_q, 0), Tokens(n_k, n_k if cross else 0)


def _heads(x: Tensor, batch: int, heads: int) -> Tensor:
    """(B, N, H * D) -> (B, H, N, D), a transposed view as diffusers makes it."""
    return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)


def joint_projections(attn, hidden_states, encoder_hidden_states):
    """SD3/SD3.5 (JointAttnProcessor2_0): q, k, v as (B, H, N, D), image tokens first."""
    batch = hidden_states.shape[0]
    query = _heads(attn.to_q(hidden_states), batch, attn.heads)
    key = _heads(attn.to_k(hidden_states), batch, attn.heads)
    value = _heads(attn.to_v(hidden_states), batch, attn.heads)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if encoder_hidden_states is not None:
        ctx_q = _heads(attn.add_q_proj(encoder_hidden_states), batch, attn.heads)
        ctx_k = _heads(attn.add_k_proj(encoder_hidden_states), batch, attn.heads)
        ctx_v = _heads(attn.add_v_proj(encoder_hidden_states), batch, attn.heads)
        if attn.norm_added_q is not None:
            ctx_q = attn.norm_added_q(ctx_q)
        if attn.norm_added_k is not None:
            ctx_k = attn.norm_added_k(ctx_k)
        query = torch.cat([query, ctx_q], dim=2)
        key = torch.cat([key, ctx_k], dim=2)
        value = torch.cat([value, ctx_v], dim=2)
    return query, key, value


def joint_output(attn, out: Tensor, n_image: int, has_context: bool):
    """(B, H, N, D) attention output -> the stock return value of JointAttnProcessor2_0."""
    batch, heads, _, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, -1, heads * dim)
    context = None
    if has_context:
        out, context = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
    out = attn.to_out[1](attn.to_out[0](out))
    return (out, context) if has_context else out


def flux_projections(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """Flux (FluxAttnProcessor): q, k, v as (B, H, N, D), text tokens first, RoPE applied."""
    from diffusers.models.embeddings import apply_rotary_emb

    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
    else:
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    query, key, value = (x.unflatten(-1, (-1, attn.head_dim)) for x in (query, key, value))
    query, key = attn.norm_q(query), attn.norm_k(key)
    if encoder_hidden_states is not None and attn.added_kv_proj_dim is not None:
        if getattr(attn, "fused_projections", False):
            ctx = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
        else:
            ctx = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                   attn.add_v_proj(encoder_hidden_states))
        ctx_q, ctx_k, ctx_v = (x.unflatten(-1, (-1, attn.head_dim)) for x in ctx)
        ctx_q, ctx_k = attn.norm_added_q(ctx_q), attn.norm_added_k(ctx_k)
        query = torch.cat([ctx_q, query], dim=1)
        key = torch.cat([ctx_k, key], dim=1)
        value = torch.cat([ctx_v, value], dim=1)
    if image_rotary_emb is not None:
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
    return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)


def flux_output(attn, out: Tensor, n_text: int, has_context: bool):
    """(B, H, N, D) -> the stock return value of FluxAttnProcessor."""
    out = out.transpose(1, 2).flatten(2, 3)
    if not has_context:
        return out
    context, out = out.split_with_sizes([n_text, out.shape[1] - n_text], dim=1)
    out = attn.to_out[1](attn.to_out[0](out.contiguous()))
    return out, attn.to_add_out(context.contiguous())


def unet_projections(attn, hidden_states, encoder_hidden_states, attention_mask, temb):
    """SDXL/SD UNet and VAE (AttnProcessor2_0): spatial norm, 4-D inputs, mask, group norm.
    Returns q, k, v (B, H, N, D), the prepared mask, and what the output step needs."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape4d = hidden_states.shape if hidden_states.ndim == 4 else None
    if shape4d is not None:
        batch, channel, height, width = shape4d
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    cross = encoder_hidden_states is not None
    if not cross:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
    query, key, value = (_heads(x, batch, attn.heads) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value, attention_mask, (residual, shape4d, cross)


def unet_output(attn, out: Tensor, extra):
    """(B, H, N, D) -> the stock return value of AttnProcessor2_0."""
    residual, shape4d, _ = extra
    batch, heads, _, dim = out.shape
    out = out.transpose(1, 2).reshape(batch, -1, heads * dim).to(out.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if shape4d is not None:
        out = out.transpose(-1, -2).reshape(shape4d)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


# -- the prepare functions of the rows --------------------------------------------------------

def _prepare_joint(processor, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, temb):
    q, k, v = joint_projections(attn, hidden_states, encoder_hidden_states)
    n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
    has_context = encoder_hidden_states is not None
    return AttentionCall(q, k, v, n_text, lambda out: joint_output(attn, out, hidden_states.shape[1], has_context))


def _prepare_flux(processor, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, temb):
    q, k, v = flux_projections(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
    double = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
    n_text = processor.flux_text_len(q.shape[2], encoder_hidden_states.shape[1] if double else None)
    return AttentionCall(q, k, v, n_text, lambda out: flux_output(attn, out, n_text, double), mask=attention_mask)


def _prepare_self_cross(processor, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                        temb):
    q, k, v, mask, extra = unet_projections(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
    return AttentionCall(q, k, v, 0, lambda out: unet_output(attn, out, extra), cross=extra[2], mask=mask)


def _is_flux(attn) -> bool:
    return type(attn).__name__.startswith("Flux")


def _is_joint(attn) -> bool:
    return getattr(attn, "add_q_proj", None) is not None or getattr(attn, "context_pre_only", None) is not None


# Tried in order; the last row takes every module the others do not (diffusers' Attention
# with AttnProcessor2_0 math: SDXL and SD1.x UNets, PixArt, SD3.5's image-only attn2, VAEs).
ATTENTION_KINDS = {
    "flux": AttentionKind("flux", text_first=True, joint=True, matches=_is_flux, prepare=_prepare_flux),
    "joint": AttentionKind("joint", text_first=False, joint=True, matches=_is_joint, prepare=_prepare_joint),
    "self_cross": AttentionKind("self_cross", text_first=False, joint=False, matches=lambda attn: True,
                                prepare=_prepare_self_cross),
}


def kind_of(attn) -> AttentionKind:
    """The row of an attention module, from its structure (the stock processor that
    ``set_attn_processor`` replaced is gone by the time we are called)."""
    return next(kind for kind in ATTENTION_KINDS.values() if kind.matches(attn))


# -- model families: what the runner needs to load, call and trace a pipeline ---------------

@dataclass(frozen=True)
class ModelFamily:
    """pipeline: the diffusers pipeline class; denoiser: its attribute holding the model whose
    attention is intervened; hub_id: the default weights; tokenizers: (pipeline attribute,
    padded length or the name of the pipeline argument that sets it) per text segment, in
    the order of the text tokens in attention; call_options: the runner's settings that the
    pipeline takes as arguments; tiny: the sinkattn.tiny builder of an offline pipeline."""

    name: str
    pipeline: str
    denoiser: str
    hub_id: str
    tokenizers: tuple[tuple[str, int | str], ...]
    call_options: tuple[str, ...] = ()
    tiny: str | None = None

    def heads(self, denoiser) -> int | None:
        """Heads per attention layer (select="shared" budgets k * H keys), or None when the
        layers differ (SDXL's UNet has 10 and 20 heads at its two attention levels: its
        config's attention_head_dim is a list of head counts per level)."""
        config = denoiser.config
        heads = getattr(config, "num_attention_heads", None)
        if self.denoiser == "unet":
            heads = config.attention_head_dim if heads is None else heads
        if isinstance(heads, (list, tuple)):
            heads = heads[0] if len(set(heads)) == 1 else None
        return heads if isinstance(heads, int) else None


MODEL_FAMILIES = {
    "sd3": ModelFamily("sd3", "StableDiffusion3Pipeline", "transformer",
                       "stabilityai/stable-diffusion-3-medium-diffusers",
                       tokenizers=(("tokenizer", 77), ("tokenizer_3", "max_sequence_length")),
                       call_options=("max_sequence_length",), tiny="tiny_sd3_pipeline"),
    "sdxl": ModelFamily("sdxl", "StableDiffusionXLPipeline", "unet", "stabilityai/stable-diffusion-xl-base-1.0",
                        tokenizers=(("tokenizer", 77),), tiny="tiny_sdxl_pipeline"),
    "flux": ModelFamily("flux", "FluxPipeline", "transformer", "black-forest-labs/FLUX.1-dev",
                        tokenizers=(("tokenizer_2", "max_sequence_length"),),
                        call_options=("max_sequence_length",), tiny="tiny_flux_pipeline"),
}


def model_family(name: str) -> ModelFamily:
    try:
        return MODEL_FAMILIES[name]
    except KeyError:
        raise ValueError(f"family must be one of {tuple(MODEL_FAMILIES)}, got {name!r}") from None
