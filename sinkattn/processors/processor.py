"""SinkSuppressProcessor: one drop-in diffusers attention processor for SD3/SD3.5, Flux and
SDXL (and any UNet or VAE that uses AttnProcessor2_0).

    pipe.transformer.set_attn_processor(SinkSuppressProcessor(k=1))

One instance is shared by every layer it is installed on. It keeps no per-layer tensors;
the only per-layer state is the layer's name, stored on the attention module itself (so
it cannot leak between layers), plus, for Flux, the text length of the current forward.
"""

from __future__ import annotations

import torch

from .core import SinkSettings, sink_core
from .families import (
    family_of,
    flux_output,
    flux_projections,
    joint_output,
    joint_projections,
    tokens_for,
    unet_output,
    unet_projections,
)

__all__ = ["SinkSuppressProcessor", "attention_modules"]

_LAYER_ATTR = "_sinkattn_layer"


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every attention module that takes a processor, in registration order."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


class SinkSuppressProcessor:
    """Attention with the top-k attention-sink keys suppressed, per call (layer and step).

    Args:
        k: keys suppressed per group (per (batch, head) for select="head"); 0 is stock attention.
        path, select, control, eta, eta_mode, value_target: as in :func:`sinkattn.sink_attention`.
        fixed: keys to intervene instead of selecting them, "RANGE:INDEX" per key ("text:0":
            the first text token, "image:0": the first image token, in any family's order);
            the same keys in every head, k ignored (k=0 still turns the processor off).
        mass_queries, apply_queries, candidates: "image", "text" or "all", mapped per family
            (SD3 [image, text], Flux [text, image], SDXL self-attention all image, SDXL
            cross-attention image queries and text keys). A range that is empty in a layer
            (e.g. candidates="text" in an image-only layer) leaves that layer unintervened.
            Defaults follow the study: mass over the image queries, applied to all queries,
            any key a candidate.
        seed: seeds this processor's torch.Generator (CPU) for control="random"; every call
            draws afresh from it, so a run is reproducible; :meth:`reset` reseeds.
        tracer: a :class:`sinkattn.tracing.SinkTracer` (or anything with ``record(...)``).
        text_len: Flux single-stream blocks only, the number of text tokens at the front of
            the joined sequence, when it cannot be learned from the double-stream blocks
            (e.g. when this processor is installed on the single blocks alone).
    """

    def __init__(self, k: int = 1, path: str = "score", select: str = "head", control: str = "sink",
                 eta: float = 0.0, mass_queries: str = "image", apply_queries: str = "all",
                 candidates: str = "all", seed: int | None = None, tracer=None, text_len: int | None = None,
                 eta_mode: str = "logit", value_target: str = "zero", fixed=()):
        from ..reference import ETA_MODES, PATHS, SELECTS, VALUE_TARGETS
        from ..selection import CONTROLS

        for name, value, choices in (("path", path, PATHS), ("select", select, SELECTS), ("control", control, tuple(CONTROLS)),
                                     ("eta_mode", eta_mode, ETA_MODES), ("value_target", value_target, VALUE_TARGETS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.settings = SinkSettings(k=k, path=path, select=select, control=control, eta=float(eta),
                                     mass_queries=mass_queries, apply_queries=apply_queries, candidates=candidates,
                                     eta_mode=eta_mode, value_target=value_target,
                                     fixed=(fixed,) if isinstance(fixed, str) else tuple(fixed))
        self.seed = seed
        self.generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        self.tracer = tracer
        self.text_len = text_len
        # Set by sinkattn.gating.intervene: gate(layer_name) -> bool, and the step clock.
        self.gate = None
        self.clock = None
        self._unnamed = 0
        self._flux_text: tuple[int, int] | None = None  # (text tokens, sequence length) of the last double block

    def __repr__(self) -> str:
        s = self.settings
        return (f"SinkSuppressProcessor(k={s.k}, path={s.path!r}, select={s.select!r}, control={s.control!r}, "
                f"eta={s.eta}, mass_queries={s.mass_queries!r}, apply_queries={s.apply_queries!r}, "
                f"candidates={s.candidates!r}, eta_mode={s.eta_mode!r}, value_target={s.value_target!r}, "
                f"fixed={s.fixed!r}, seed={self.seed})")

    # -- layers ---------------------------------------------------------------------------
    def bind(self, model: torch.nn.Module) -> "SinkSuppressProcessor":
        """Name the attention modules of ``model`` after their module paths (for tracing and
        gating). Without it, layers are named "attn#i" in the order they are first called."""
        for index, (name, module) in enumerate(attention_modules(model)):
            setattr(module, _LAYER_ATTR, (name, index))
        return self

    def layer_of(self, attn) -> tuple[str, int]:
        layer = getattr(attn, _LAYER_ATTR, None)
        if layer is None:
            layer = (f"attn#{self._unnamed}", self._unnamed)
            self._unnamed += 1
            setattr(attn, _LAYER_ATTR, layer)
        return layer

    def reset(self) -> None:
        """Reseed the random control's generator and forget the Flux text length."""
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
        self._flux_text = None

    # -- the call -------------------------------------------------------------------------
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, *args, temb=None, **kwargs):
        # Every keyword diffusers may pass is declared by name above: it drops the others.
        # Flux passes image_rotary_emb as the fifth positional argument.
        family = family_of(attn)
        if family.name == "flux":
            return self._flux(attn, family, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if family.name == "sd3":
            return self._joint(attn, family, hidden_states, encoder_hidden_states)
        return self._unet(attn, family, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _attend(self, attn, family, q, k, v, n_text, cross=False, attention_mask=None):
        name, index = self.layer_of(attn)
        active = self.gate is None or self.gate(name)
        q_tokens, k_tokens = tokens_for(family, q.shape[2], k.shape[2], n_text, cross)
        out, record = sink_core(q, k, v, self.settings, q_tokens, k_tokens, active=active,
                                want_mass=self.tracer is not None, attention_mask=attention_mask,
                                generator=self.generator)
        if record is not None:
            self.tracer.record(layer=name, layer_index=index, family=family.name, call=record,
                               clock=self.clock, intervened=active and record.sinks is not None)
        return out

    def _joint(self, attn, family, hidden_states, encoder_hidden_states):
        q, k, v = joint_projections(attn, hidden_states, encoder_hidden_states)
        n_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        out = self._attend(attn, family, q, k, v, n_text).to(q.dtype)
        return joint_output(attn, out, hidden_states.shape[1], encoder_hidden_states is not None)

    def _flux(self, attn, family, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        q, k, v = flux_projections(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        double = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
        if double:
            n_text = encoder_hidden_states.shape[1]
            self._flux_text = (n_text, q.shape[2])
        else:
            n_text = self._single_text_len(q.shape[2])
        out = self._attend(attn, family, q, k, v, n_text, attention_mask=attention_mask).to(q.dtype)
        return flux_output(attn, out, n_text, double)

    def _single_text_len(self, n: int) -> int:
        """Text tokens at the front of a Flux single-stream block's joined sequence. Flux runs
        every double-stream block before the single-stream ones in each forward, on a sequence
        of the same length, so the last double-stream call of this processor knows it."""
        if self.text_len is not None:
            return self.text_len
        if self._flux_text is not None and self._flux_text[1] == n:
            return self._flux_text[0]
        s = self.settings
        needs_text = any(r != "all" for r in (s.mass_queries, s.apply_queries, s.candidates))
        if not needs_text or (s.k == 0 and self.tracer is None):
            return 0
        raise ValueError(
            "SinkSuppressProcessor: cannot tell how many text tokens lead this Flux single-stream "
            f"block's sequence of {n} tokens: install the processor on the double-stream blocks too "
            "(transformer.set_attn_processor(...) does), or pass text_len= (the pipeline's "
            "max_sequence_length).")

    def _unet(self, attn, family, hidden_states, encoder_hidden_states, attention_mask, temb):
        q, k, v, mask, extra = unet_projections(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        out = self._attend(attn, family, q, k, v, 0, cross=extra[2], attention_mask=mask).to(q.dtype)
        return unet_output(attn, out, extra)
