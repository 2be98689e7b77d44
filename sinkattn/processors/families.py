"""The tables of what differs between model families: one row per kind of attention call
(how a module lays out its call, with the functions that project it and finish it), and one
row per model family (pipeline, denoiser, tokenizers, weights) that the runner reads.

Everything a processor does besides projections (the sink math, tracing, gating) lives in
:func:`sinkattn.processors.core.sink_core`. Each projection function below follows the stock
diffusers processor of its family line for line, so that with nothing to intervene the
result is the stock result bit for bit. Adding a family is a row here plus, when its
attention call is laid out in a new way, its two functions (prepare, finish).

Attention kinds (tried in this order):

    flux        FluxAttention (FluxAttnProcessor): [text, image], RoPE, double and single blocks
    qwen        Qwen-Image joint attention (QwenDoubleStreamAttnProcessor2_0): [text, image],
                RMS QK-norm per stream, complex RoPE per stream, the text padding mask
    joint       SD3/SD3.5 joint attention (JointAttnProcessor2_0): [image, text], QK-norm
    wan         WanAttention (WanAttnProcessor): self-attention over the (frame, row, col)
                token grid with 3-D RoPE and RMS QK-norm across heads; cross-attention to text
    self_cross  Attention with AttnProcessor2_0 math: SD/SDXL UNets, PixArt (self-attention
                and cross-attention with the T5 padding mask, diffusers' -10000 bias, which
                the op gets as -inf), SD3.5's image-only attn2, VAEs

Video: the image tokens of a call are a (frames, rows, cols) grid flattened row-major, frame
slowest (:class:`Grid`); :func:`input_grid` reads it from a denoiser forward's arguments and
:meth:`ModelFamily.token_grid` from a pipeline call's size, so that a key index can be named
(frame, row, col), e.g. a sink in the first latent frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from ..memo import ObjectMemo
from .core import Tokens

__all__ = ["AttentionCall", "AttentionKind", "ATTENTION_KINDS", "CallInputs", "Grid", "ModelFamily",
           "MODEL_FAMILIES", "input_grid", "kind_of", "model_family", "tokens_for"]


@dataclass
class CallInputs:
    """The arguments of one attention call, as diffusers hands them to a processor.

    rotary: the positional rotation, whatever the family calls it: ``image_rotary_emb``
        (Flux: (cos, sin); Qwen-Image: (image freqs, text freqs), complex) or Wan's
        ``rotary_emb`` ((cos, sin) over the token grid), the fifth positional argument.
    text_mask: ``encoder_hidden_states_mask`` (Qwen-Image: (B, text tokens), 1/True = keep).
    """

    hidden_states: Tensor
    encoder_hidden_states: Tensor | None = None
    attention_mask: Tensor | None = None
    rotary: Any = None
    temb: Tensor | None = None
    text_mask: Tensor | None = None


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
    # The mask as the stock processor hands it to SDPA, when ``mask`` differs from it in form
    # only (diffusers' -10000 padding bias, given to the op as -inf so that padding keys are
    # never selected): the calls left alone get this one, bit for bit the stock call.
    stock_mask: Tensor | None = None


@dataclass(frozen=True)
class AttentionKind:
    """How one kind of attention module lays out its call.

    text_first: order of the joint sequence (SD3 [image, text], Flux [text, image]).
    joint: text tokens are queries as well as keys (MM-DiT joint attention); False for
        self/cross-attention, where the queries are image tokens and cross-attention keys
        are all text.
    matches(attn, inputs): this row handles the module called with these CallInputs (rows are
        tried in order; ``inputs`` is None when only the module is known). The module's
        structure decides, except where two families build the same module: Qwen-Image's
        joint attention is SD3's ``Attention`` layout and is told apart by its call (a
        rotary pair of complex (image, text) frequencies).
    prepare(processor, attn, inputs) -> AttentionCall: projections, QK-norm, RoPE, text
        length, mask.
    text_mask: the kind takes ``encoder_hidden_states_mask`` (any other kind refuses it).
    """

    name: str
    text_first: bool
    joint: bool
    matches: Callable[[Any, CallInputs | None], bool]
    prepare: Callable[..., AttentionCall]
    text_mask: bool = False


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


# The key-padding masks built from one diffusers mask object: (mask object, key) -> (its
# version counter (None for inference tensors), (mask, op mask)). PixArt-Sigma,
# the UNets and Qwen-Image pass one text mask object to every block of a forward: its masks
# are built once per key (sequence length, batch, heads), and the op mask is declared to the
# op as unchanging, so the key-padding plan is read from the device once per forward and
# key, not once per layer. Masks per query are built on every call (no cache holds them).
_PREPARED = ObjectMemo(max_entries=32)


def _version(t: Tensor):
    return None if t.is_inference() else t._version


def _memoized_masks(source: Tensor, key: tuple, build: Callable[[], tuple[Tensor, Tensor | None]]):
    """``build()`` -> (mask, op mask), once per ``source`` object and ``key`` (again if
    ``source`` was changed in place, where torch counts it); every call under torch.compile."""
    if torch.compiler.is_compiling():
        return build()
    hit = _PREPARED.get(source, key)
    if hit is not None and hit[0] == _version(source):
        return hit[1]
    from ..ops import reuse_key_padding_plans

    mask, op_mask = built = build()
    if mask.shape[2] != 1:  # a mask per query (not key padding): kept by no cache
        return built
    if op_mask is not None:
        reuse_key_padding_plans(op_mask)  # made here, seen by no one else: it does not change
    _PREPARED.put(source, (_version(source), built), key)
    return built


def prepared_mask(attn, mask: Tensor, sequence_length: int, batch: int) -> Tensor:
    """``attn.prepare_attention_mask`` viewed as (B, H, Nq or 1, Nk), built once per mask
    object, sequence length, batch and head count (_memoized_masks)."""
    def build():
        prepared = attn.prepare_attention_mask(mask, sequence_length, batch)
        prepared = prepared.view(batch, attn.heads, -1, prepared.shape[-1])
        return prepared, _op_mask(prepared)

    return _memoized_masks(mask, ("unet", sequence_length, batch, attn.heads), build)[0]


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
        attention_mask = prepared_mask(attn, attention_mask, sequence_length, batch)
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


def qwen_projections(attn, hidden_states, encoder_hidden_states, image_rotary_emb):
    """Qwen-Image (QwenDoubleStreamAttnProcessor2_0): q, k, v as (B, N, H, D), text tokens
    first, RMS QK-norm per stream, complex RoPE per stream (image and text frequencies)."""
    from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

    img_query = attn.to_q(hidden_states)
    img_key = attn.to_k(hidden_states)
    img_value = attn.to_v(hidden_states)
    txt_query = attn.add_q_proj(encoder_hidden_states)
    txt_key = attn.add_k_proj(encoder_hidden_states)
    txt_value = attn.add_v_proj(encoder_hidden_states)
    head_dim = attn.inner_dim // attn.heads
    img_query, img_key, img_value = (x.unflatten(-1, (-1, head_dim)) for x in (img_query, img_key, img_value))
    txt_query, txt_key, txt_value = (x.unflatten(-1, (-1, head_dim)) for x in (txt_query, txt_key, txt_value))
    if attn.norm_q is not None:
        img_query = attn.norm_q(img_query)
    if attn.norm_k is not None:
        img_key = attn.norm_k(img_key)
    if attn.norm_added_q is not None:
        txt_query = attn.norm_added_q(txt_query)
    if attn.norm_added_k is not None:
        txt_key = attn.norm_added_k(txt_key)
    if image_rotary_emb is not None:
        img_freqs, txt_freqs = image_rotary_emb
        img_query = apply_rotary_emb_qwen(img_query, img_freqs, use_real=False)
        img_key = apply_rotary_emb_qwen(img_key, img_freqs, use_real=False)
        txt_query = apply_rotary_emb_qwen(txt_query, txt_freqs, use_real=False)
        txt_key = apply_rotary_emb_qwen(txt_key, txt_freqs, use_real=False)
    joint_query = torch.cat([txt_query, img_query], dim=1)
    joint_key = torch.cat([txt_key, img_key], dim=1)
    joint_value = torch.cat([txt_value, img_value], dim=1)
    return joint_query, joint_key, joint_value


def qwen_text_mask(hidden_states, encoder_hidden_states_mask):
    """The joint keep-mask of QwenDoubleStreamAttnProcessor2_0: the text mask, then every
    image token, as (B, 1, 1, text + image) (SDPA broadcasts it over heads and queries);
    built once per text mask object and image length (_memoized_masks)."""
    if encoder_hidden_states_mask is None:
        return None
    batch, seq_img = hidden_states.shape[:2]

    def build():
        image_mask = torch.ones((batch, seq_img), dtype=torch.bool, device=hidden_states.device)
        joint = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        return joint, joint

    return _memoized_masks(encoder_hidden_states_mask, ("qwen", batch, seq_img), build)[0]


def qwen_output(attn, out: Tensor, n_text: int, dtype):
    """(B, H, N, D) -> the stock return value of QwenDoubleStreamAttnProcessor2_0: (image, text)."""
    joint_hidden_states = out.transpose(1, 2).flatten(2, 3)
    joint_hidden_states = joint_hidden_states.to(dtype)
    txt_attn_output = joint_hidden_states[:, :n_text, :]
    img_attn_output = joint_hidden_states[:, n_text:, :]
    img_attn_output = attn.to_out[0](img_attn_output.contiguous())
    if len(attn.to_out) > 1:
        img_attn_output = attn.to_out[1](img_attn_output)
    txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
    return img_attn_output, txt_attn_output


def _wan_rotary(hidden_states: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> Tensor:
    """WanAttnProcessor's apply_rotary_emb (interleaved pairs), on (B, N, H, D)."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def wan_projections(attn, hidden_states, encoder_hidden_states, rotary_emb):
    """Wan (WanAttnProcessor, text-to-video): q, k, v as (B, N, H, D); RMS QK-norm across
    heads before the head split; 3-D RoPE over the token grid (self-attention). Keys and
    values from the text in cross-attention."""
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    if getattr(attn, "fused_projections", False):
        if not attn.is_cross_attention:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key, value = attn.to_kv(context).chunk(2, dim=-1)
    else:
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
    query = attn.norm_q(query)
    key = attn.norm_k(key)
    query = query.unflatten(2, (attn.heads, -1))
    key = key.unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query = _wan_rotary(query, *rotary_emb)
        key = _wan_rotary(key, *rotary_emb)
    return query, key, value


def wan_output(attn, out: Tensor, dtype):
    """(B, H, N, D) -> the stock return value of WanAttnProcessor."""
    hidden_states = out.transpose(1, 2).flatten(2, 3)
    hidden_states = hidden_states.to(dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    return hidden_states


# -- the prepare functions of the rows --------------------------------------------------------

def _prepare_joint(processor, attn, inputs: CallInputs):
    hidden_states, encoder_hidden_states = inputs.hidden_states, inputs.encoder_hidden_states
    q, k, v = joint_projections(attn, hidden_states, encoder_hidden_states)
    n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
    has_context = encoder_hidden_states is not None
    return AttentionCall(q, k, v, n_text, lambda out: joint_output(attn, out, hidden_states.shape[1], has_context))


def _prepare_flux(processor, attn, inputs: CallInputs):
    encoder_hidden_states = inputs.encoder_hidden_states
    q, k, v = flux_projections(attn, inputs.hidden_states, encoder_hidden_states, inputs.rotary)
    double = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
    n_text = processor.flux_text_len(q.shape[2], encoder_hidden_states.shape[1] if double else None)
    return AttentionCall(q, k, v, n_text, lambda out: flux_output(attn, out, n_text, double),
                         mask=inputs.attention_mask)


def _prepare_qwen(processor, attn, inputs: CallInputs):
    """QwenDoubleStreamAttnProcessor2_0: the same refusals, the same joint mask."""
    if inputs.encoder_hidden_states is None:
        raise ValueError("QwenDoubleStreamAttnProcessor2_0 requires encoder_hidden_states (text stream)")
    if inputs.attention_mask is not None:
        raise ValueError("QwenDoubleStreamAttnProcessor2_0 does not accept an external attention_mask. "
                         "Pass encoder_hidden_states_mask to let the processor build the joint mask.")
    mask = qwen_text_mask(inputs.hidden_states, inputs.text_mask)
    n_text = inputs.encoder_hidden_states.shape[1]
    q, k, v = qwen_projections(attn, inputs.hidden_states, inputs.encoder_hidden_states, inputs.rotary)
    dtype = q.dtype
    return AttentionCall(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), n_text,
                         lambda out: qwen_output(attn, out, n_text, dtype), mask=mask)


def _prepare_wan(processor, attn, inputs: CallInputs):
    if attn.add_k_proj is not None:
        raise NotImplementedError(
            "SinkSuppressProcessor: Wan image-to-video cross-attention (a WanAttention with add_k_proj: "
            "text and image-context keys in two attentions) is not supported; text-to-video is")
    cross = inputs.encoder_hidden_states is not None
    q, k, v = wan_projections(attn, inputs.hidden_states, inputs.encoder_hidden_states, inputs.rotary)
    dtype = q.dtype
    return AttentionCall(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 0,
                         lambda out: wan_output(attn, out, dtype), cross=cross, mask=inputs.attention_mask)


# diffusers writes a padding mask as an additive bias of -10000 (UNet2DConditionModel's and
# PixArt's encoder_attention_mask: (1 - mask) * -10000); the op reads only -inf (or False) as
# masked, which is what keeps padding keys out of the selection (control="bottom" and
# "random" would pick them otherwise). Biases at or below this are that mask: their
# probability is exactly 0 in float32 either way (bfloat16 holds -10000 as -9984).
PADDING_BIAS = -5000.0


def _op_mask_of(mask: Tensor | None) -> Tensor | None:
    """The op's mask for a prepared mask: the one built with it (_memoized_masks), else made now."""
    if mask is not None and not torch.compiler.is_compiling():
        for _, (prepared, op_mask) in _PREPARED.values():
            if prepared is mask:
                return op_mask
    return _op_mask(mask)


def _op_mask(mask: Tensor | None) -> Tensor | None:
    """A float mask with diffusers' padding bias as -inf; anything else as it is."""
    if mask is None or not mask.is_floating_point():
        return None
    return mask.masked_fill(mask <= PADDING_BIAS, float("-inf"))


def _prepare_self_cross(processor, attn, inputs: CallInputs):
    q, k, v, mask, extra = unet_projections(attn, inputs.hidden_states, inputs.encoder_hidden_states,
                                            inputs.attention_mask, inputs.temb)
    op_mask = _op_mask_of(mask)
    return AttentionCall(q, k, v, 0, lambda out: unet_output(attn, out, extra), cross=extra[2],
                         mask=mask if op_mask is None else op_mask, stock_mask=None if op_mask is None else mask)


# Class tests are isinstance checks on lazily imported classes: dynamo traces them under
# torch.compile(fullgraph=True), where str methods on a class's __name__ break the graph.
def _is_flux(attn, inputs=None) -> bool:
    from diffusers.models.transformers.transformer_flux import FluxAttention

    return isinstance(attn, FluxAttention)


def _is_joint(attn, inputs=None) -> bool:
    return getattr(attn, "add_q_proj", None) is not None or getattr(attn, "context_pre_only", None) is not None


def _is_qwen(attn, inputs=None) -> bool:
    """Qwen-Image's joint Attention is built as SD3's (added q/k/v projections, QK-norm); its
    call differs: RoPE as a pair of complex (image, text) frequency tables."""
    rotary = None if inputs is None else inputs.rotary
    return (_is_joint(attn) and isinstance(rotary, (tuple, list)) and len(rotary) == 2
            and all(isinstance(f, Tensor) and f.is_complex() for f in rotary))


def _is_wan(attn, inputs=None) -> bool:
    from diffusers.models.transformers.transformer_wan import WanAttention

    return isinstance(attn, WanAttention)


# Tried in order; the last row takes every module the others do not (diffusers' Attention
# with AttnProcessor2_0 math: SDXL and SD1.x UNets, PixArt, SD3.5's image-only attn2, VAEs).
ATTENTION_KINDS = {
    "flux": AttentionKind("flux", text_first=True, joint=True, matches=_is_flux, prepare=_prepare_flux),
    "qwen": AttentionKind("qwen", text_first=True, joint=True, matches=_is_qwen, prepare=_prepare_qwen,
                          text_mask=True),
    "joint": AttentionKind("joint", text_first=False, joint=True, matches=_is_joint, prepare=_prepare_joint),
    "wan": AttentionKind("wan", text_first=False, joint=False, matches=_is_wan, prepare=_prepare_wan),
    "self_cross": AttentionKind("self_cross", text_first=False, joint=False, matches=lambda attn, inputs=None: True,
                                prepare=_prepare_self_cross),
}


def kind_of(attn, inputs: CallInputs | None = None) -> AttentionKind:
    """The row of an attention module, from its structure and, where two families build the
    same module, from its call (the stock processor that ``set_attn_processor`` replaced is
    gone by the time we are called)."""
    return next(kind for kind in ATTENTION_KINDS.values() if kind.matches(attn, inputs))


# -- token grids: where an image key sits in (frame, row, col) ------------------------------

class Grid(NamedTuple):
    """The image tokens of a call: ``frames`` x ``rows`` x ``cols``, flattened row-major with
    the frame slowest (image index = (frame * rows + row) * cols + col), as every family here
    lays them out (images have one frame). In a call whose image tokens start at
    ``tokens.image[0]`` (:class:`sinkattn.processors.core.Tokens`), key ``j`` is image index
    ``j - tokens.image[0]``. UNet levels below the first see the grid downsampled."""

    frames: int
    rows: int
    cols: int

    @property
    def size(self) -> int:
        return self.frames * self.rows * self.cols

    def position(self, index: int) -> tuple[int, int, int]:
        """(frame, row, col) of image index ``index`` (0 <= index < size)."""
        if not 0 <= index < self.size:
            raise IndexError(f"image index {index} is outside a {self.frames}x{self.rows}x{self.cols} grid")
        frame, rest = divmod(int(index), self.rows * self.cols)
        return (frame, *divmod(rest, self.cols))

    def frame_range(self, frame: int = 0) -> tuple[int, int]:
        """Half-open image-index range of one latent frame (frame 0: the first frame, which
        Wan's causal VAE encodes alone)."""
        if not 0 <= frame < self.frames:
            raise IndexError(f"frame {frame} is outside a grid of {self.frames} frames")
        per = self.rows * self.cols
        return frame * per, (frame + 1) * per


def _patch(config) -> tuple[int, int, int]:
    patch = getattr(config, "patch_size", None) or 1
    if isinstance(patch, (tuple, list)):
        return tuple(int(p) for p in patch) if len(patch) == 3 else (1, int(patch[0]), int(patch[1]))
    return 1, int(patch), int(patch)


def input_grid(model, arguments: dict) -> Grid | None:
    """The image-token grid of one denoiser forward, from its arguments (a forward pre-hook's
    bound arguments): Wan's 5-D latents (B, C, F, H, W) over its (t, h, w) patch; Qwen-Image's
    ``img_shapes`` (frames, rows, cols per sample, already in tokens); Flux's ``img_ids`` (0,
    row, col) per token (one host sync); 4-D latents (SD3, PixArt, UNets) over the patch size
    (1 for UNets). None when the arguments say nothing of a grid."""
    sample = arguments.get("hidden_states", arguments.get("sample"))
    _, pr, pc = patch = _patch(getattr(model, "config", None))
    if isinstance(sample, Tensor) and sample.dim() == 5:
        return Grid(sample.shape[2] // patch[0], sample.shape[3] // pr, sample.shape[4] // pc)
    shapes = arguments.get("img_shapes")
    if shapes:
        first = shapes[0]
        first = first[0] if isinstance(first, (list, tuple)) and isinstance(first[0], (list, tuple)) else first
        return Grid(*(int(x) for x in first))
    ids = arguments.get("img_ids")
    if isinstance(ids, Tensor):
        ids = ids.reshape(-1, ids.shape[-1])
        return Grid(1, int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)
    if isinstance(sample, Tensor) and sample.dim() == 4:
        return Grid(1, sample.shape[-2] // pr, sample.shape[-1] // pc)
    return None


# -- model families: what the runner needs to load, call and trace a pipeline ---------------

def _identity_prompt(pipe, prompt: str) -> str:
    return prompt


def _pixart_prompt(pipe, prompt: str) -> str:
    """PixArt's encode_prompt with clean_caption=False: lower-cased and stripped."""
    return pipe._text_preprocessing(prompt, clean_caption=False)[0]


def _wan_prompt(pipe, prompt: str) -> str:
    """Wan's prompt_clean: ftfy (when installed), HTML unescaping, whitespace collapsed."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    return prompt_clean(prompt)


LAYOUTS = ("patched", "unet", "packed", "video")


@dataclass(frozen=True)
class ModelFamily:
    """One model family, as the runner loads, calls and traces it.

    pipeline: the diffusers pipeline class; denoiser: its attribute holding the model whose
        attention is intervened; hub_id: the default weights; tiny: the sinkattn.tiny builder
        of an offline pipeline (callable without arguments).
    tokenizers: (pipeline attribute, padded length | name of the call option that sets it |
        None for unpadded) per text segment, in the order of the text tokens in attention.
    call_options: the runner's settings that the pipeline takes as arguments of the same name
        (max_sequence_length, num_frames).
    call_kwargs: fixed arguments of every pipeline call (PixArt: no resolution binning, whose
        table knows only the released sample sizes, and no caption cleaning, which depends on
        optional packages; Qwen-Image: the negative prompt that turns its CFG on).
    guidance: the pipeline argument that takes the CFG scale (Qwen-Image: true_cfg_scale).
    output: the attribute of the pipeline output: "images", or "frames" for video.
    layout: how latents become image tokens: "patched" (B, C, h, w) patchified in the
        denoiser (SD3, PixArt), "unet" (no patches), "packed" 2x2 latent patches packed by the
        pipeline (Flux, Qwen-Image), "video" (B, C, f, h, w) with a (t, h, w) patch (Wan).
    prompt_text(pipe, prompt): the text the pipeline tokenizes (PixArt lower-cases, Wan cleans).
    prompt_template: (pipeline attribute of the chat template, of the number of its leading
        tokens the pipeline drops) (Qwen-Image).
    guidance_passes: the branch of each denoiser forward of one step when the pipeline runs
        classifier-free guidance as separate forwards (Wan, Qwen-Image: cond, then uncond);
        None when it batches [uncond, cond] in one forward.
    """

    name: str
    pipeline: str
    denoiser: str
    hub_id: str
    tokenizers: tuple[tuple[str, int | str | None], ...]
    call_options: tuple[str, ...] = ()
    tiny: str | None = None
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    guidance: str = "guidance_scale"
    output: str = "images"
    layout: str = "patched"
    prompt_text: Callable[[Any, str], str] = _identity_prompt
    prompt_template: tuple[str, str] | None = None
    guidance_passes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

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

    def call_arguments(self, guidance: float | None = None, **options) -> dict:
        """The family's arguments of one pipeline call: the fixed ones, the CFG scale under
        this family's name, and the runner's ``options`` that this family takes (the others
        are left out: max_sequence_length means nothing to SDXL)."""
        kwargs = dict(self.call_kwargs)
        if guidance is not None:
            kwargs[self.guidance] = guidance
        kwargs.update({name: value for name, value in options.items() if name in self.call_options})
        return kwargs

    def _scale(self, pipe) -> int:
        return pipe.vae_scale_factor_spatial if self.layout == "video" else pipe.vae_scale_factor

    def _frames(self, pipe, num_frames: int | None) -> int:
        """Latent frames of ``num_frames`` video frames, rounded as the pipeline rounds them."""
        t = pipe.vae_scale_factor_temporal
        num_frames = 1 if num_frames is None else int(num_frames)
        if num_frames % t != 1:
            num_frames = num_frames // t * t + 1
        return (max(num_frames, 1) - 1) // t + 1

    def token_grid(self, pipe, height: int, width: int, num_frames: int | None = None) -> Grid:
        """The image-token grid of a pipeline call at this size (frames: Wan's latent frames,
        1 for images); the same as :func:`input_grid` of the denoiser's forwards."""
        s, config = self._scale(pipe), getattr(pipe, self.denoiser).config
        if self.layout == "packed":
            return Grid(1, int(height) // (s * 2), int(width) // (s * 2))
        pt, pr, pc = _patch(config) if self.layout != "unet" else (1, 1, 1)
        frames = self._frames(pipe, num_frames) if self.layout == "video" else 1
        return Grid(frames // pt, int(height) // s // pr, int(width) // s // pc)

    def latent_shape(self, pipe, height: int, width: int, num_frames: int | None = None,
                     batch: int = 1) -> tuple[int, ...]:
        """The shape of the pipeline's ``latents=`` argument at this size, as its
        prepare_latents draws them (packed for Flux and Qwen-Image, 5-D for Wan)."""
        s, channels = self._scale(pipe), getattr(pipe, self.denoiser).config.in_channels
        if self.layout == "packed":
            rows, cols = int(height) // (s * 2), int(width) // (s * 2)
            return batch, rows * cols, channels
        if self.layout == "video":
            return batch, channels, self._frames(pipe, num_frames), int(height) // s, int(width) // s
        return batch, channels, int(height) // s, int(width) // s

    def text_tokens(self, pipe, prompt: str, **options) -> list[str]:
        """The token strings of the text keys in attention, in order, for one prompt (a batch
        of one): each segment tokenized as the pipeline tokenizes it (padding, truncation,
        template), at the lengths ``options`` set (max_sequence_length)."""
        text = self.prompt_text(pipe, prompt)
        drop = 0
        if self.prompt_template is not None:
            template, start = self.prompt_template
            text, drop = getattr(pipe, template).format(text), int(getattr(pipe, start))
        tokens = []
        for attribute, length in self.tokenizers:
            tokenizer = getattr(pipe, attribute)
            if isinstance(length, str):
                if length not in options:
                    raise ValueError(f"text_tokens: family {self.name!r} needs {length}= (the pipeline call's)")
                length = int(options[length])
            padding = dict(padding="max_length", max_length=length, truncation=True) if length else {}
            ids = tokenizer(text, add_special_tokens=True, **padding).input_ids[drop:]
            tokens.extend(tokenizer.convert_ids_to_tokens(ids))
        return tokens


MODEL_FAMILIES = {
    "sd3": ModelFamily("sd3", "StableDiffusion3Pipeline", "transformer",
                       "stabilityai/stable-diffusion-3-medium-diffusers",
                       tokenizers=(("tokenizer", 77), ("tokenizer_3", "max_sequence_length")),
                       call_options=("max_sequence_length",), tiny="tiny_sd3_pipeline"),
    # MMDiT-X: blocks 0-12 add an image-only self-attention (attn2); RMS QK-norm on both streams.
    "sd35-medium": ModelFamily("sd35-medium", "StableDiffusion3Pipeline", "transformer",
                               "stabilityai/stable-diffusion-3.5-medium",
                               tokenizers=(("tokenizer", 77), ("tokenizer_3", "max_sequence_length")),
                               call_options=("max_sequence_length",), tiny="tiny_sd35_pipeline"),
    "sd35-large": ModelFamily("sd35-large", "StableDiffusion3Pipeline", "transformer",
                              "stabilityai/stable-diffusion-3.5-large",
                              tokenizers=(("tokenizer", 77), ("tokenizer_3", "max_sequence_length")),
                              call_options=("max_sequence_length",), tiny="tiny_sd35_large_pipeline"),
    "sdxl": ModelFamily("sdxl", "StableDiffusionXLPipeline", "unet", "stabilityai/stable-diffusion-xl-base-1.0",
                        tokenizers=(("tokenizer", 77),), tiny="tiny_sdxl_pipeline", layout="unet"),
    "flux": ModelFamily("flux", "FluxPipeline", "transformer", "black-forest-labs/FLUX.1-dev",
                        tokenizers=(("tokenizer_2", "max_sequence_length"),),
                        call_options=("max_sequence_length",), tiny="tiny_flux_pipeline", layout="packed"),
    "pixart-sigma": ModelFamily("pixart-sigma", "PixArtSigmaPipeline", "transformer",
                                "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
                                tokenizers=(("tokenizer", "max_sequence_length"),),
                                call_options=("max_sequence_length",), tiny="tiny_pixart_pipeline",
                                call_kwargs=(("use_resolution_binning", False), ("clean_caption", False)),
                                prompt_text=_pixart_prompt),
    # Text unpadded (a batch of one has no mask), after the chat template's dropped prefix.
    "qwen-image": ModelFamily("qwen-image", "QwenImagePipeline", "transformer", "Qwen/Qwen-Image",
                              tokenizers=(("tokenizer", None),), tiny="tiny_qwenimage_pipeline",
                              call_kwargs=(("negative_prompt", " "),), guidance="true_cfg_scale", layout="packed",
                              prompt_template=("prompt_template_encode", "prompt_template_encode_start_idx"),
                              guidance_passes=("cond", "uncond")),
    # Text zero-padded to max_sequence_length (no mask); the token grid is (latent frames, rows, cols).
    "wan-t2v": ModelFamily("wan-t2v", "WanPipeline", "transformer", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                           tokenizers=(("tokenizer", "max_sequence_length"),),
                           call_options=("max_sequence_length", "num_frames"), tiny="tiny_wan_pipeline",
                           output="frames", layout="video", prompt_text=_wan_prompt,
                           guidance_passes=("cond", "uncond")),
}


def model_family(name: str) -> ModelFamily:
    try:
        return MODEL_FAMILIES[name]
    except KeyError:
        raise ValueError(f"family must be one of {tuple(MODEL_FAMILIES)}, got {name!r}") from None
