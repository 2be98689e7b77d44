"""The table of what differs between the model families, and the per-family projections.

Everything a family processor does besides projections (the sink math, tracing, gating)
lives in :func:`sinkattn.processors.core.sink_core`. Each projection function below
follows the stock diffusers processor of its family line for line, so that with nothing
to intervene the result is the stock result bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .core import Tokens

__all__ = ["Family", "FAMILIES", "family_of", "tokens_for"]


@dataclass(frozen=True)
class Family:
    """How a family lays out its attention call.

    text_first: order of the joint sequence (SD3 concatenates [image, text], Flux [text, image]).
    joint: text tokens are queries as well as keys (MM-DiT joint attention); False for UNet
        cross-attention, where the queries are image tokens and every key is a text token.
    qk_norm: what the stock processor normalises (applied whenever the module has the norm).
    rope: rotary embeddings are applied to q and k after the concatenation.
    text_len: where the number of text tokens of a call comes from.
    """

    name: str
    text_first: bool
    joint: bool
    qk_norm: str
    rope: bool
    text_len: str


FAMILIES = {
    "sd3": Family(
        "sd3", text_first=False, joint=True, rope=False,
        qk_norm="norm_q/norm_k on the image stream, norm_added_q/norm_added_k on the text stream, "
                "when present (SD3.5: rms_norm on each stream)",
        text_len="encoder_hidden_states.shape[1]; 0 in SD3.5's image-only attn2",
    ),
    "flux": Family(
        "flux", text_first=True, joint=True, rope=True,
        qk_norm="RMSNorm norm_q/norm_k on the image stream, norm_added_q/norm_added_k on the text stream",
        text_len="double blocks: encoder_hidden_states.shape[1]; single blocks (joined sequence): "
                 "remembered from the double blocks of the same forward",
    ),
    "sdxl": Family(
        "sdxl", text_first=False, joint=False, rope=False,
        qk_norm="norm_q/norm_k when present (none in SDXL)",
        text_len="self-attention: 0; cross-attention: every key",
    ),
}


def family_of(attn) -> Family:
    """The family of an attention module, from its structure (the stock processor that
    ``set_attn_processor`` replaced is gone by the time we are called). SD3.5's image-only
    attn2 has no text projections and takes the "sdxl" row: all tokens image, QK-norm
    applied, the same math as JointAttnProcessor2_0 without context."""
    if type(attn).__name__.startswith("Flux"):
        return FAMILIES["flux"]
    if getattr(attn, "add_q_proj", None) is not None or getattr(attn, "context_pre_only", None) is not None:
        return FAMILIES["sd3"]
    return FAMILIES["sdxl"]


def tokens_for(family: Family, n_q: int, n_k: int, n_text: int, cross: bool) -> tuple[Tokens, Tokens]:
    """Query and key token layouts of one call. ``n_text``: text tokens in the joint sequence
    (joint families) ; ``cross``: the keys come from the text encoder (UNet cross-attention)."""
    if family.joint:
        return Tokens(n_q, n_text, family.text_first), Tokens(n_k, n_text, family.text_first)
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
