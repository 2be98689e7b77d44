"""SinkSuppressProcessor: one drop-in diffusers attention processor for SD3/SD3.5, Flux,
SDXL, PixArt-Sigma, Qwen-Image and Wan 2.1 (and any UNet or VAE that uses AttnProcessor2_0);
what differs between them is a row of sinkattn.processors.families.ATTENTION_KINDS.

    pipe.transformer.set_attn_processor(SinkSuppressProcessor(k=1))

One instance is shared by every layer it is installed on. It keeps no per-layer tensors;
the only per-layer state is the layer's name, stored on the attention module itself (so
it cannot leak between layers), plus, for Flux, the text length of the current forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import SinkSettings, sink_core
from .families import CallInputs, kind_of, tokens_for

__all__ = ["SinkSuppressProcessor", "attention_modules"]

_LAYER_ATTR = "_sinkattn_layer"


def attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every attention module that takes a processor, in registration order."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


class SinkSuppressProcessor:
    """Attention with the top-k attention-sink keys suppressed, per call (layer and step).

    Args:
        k: keys suppressed per group (per (batch, head) for select="head"); 0 is stock attention.
        path, select, control, eta, eta_mode, value_target, value_noise_std: as in
            :func:`sinkattn.sink_attention` (value_target "zero", "mean" or "noise").
        fixed: keys to intervene instead of selecting them, "RANGE:INDEX" per key ("text:0":
            the first text token, "image:0": the first image token, in any family's order);
            the same keys in every head, k ignored (k=0 still turns the processor off).
        mass_queries, apply_queries, candidates: "image", "text" or "all", mapped per family
            (SD3 [image, text], Flux [text, image], SDXL self-attention all image, SDXL
            cross-attention image queries and text keys). A range that is empty in a layer
            (e.g. candidates="text" in an image-only layer) leaves that layer unintervened.
            Defaults follow the study: mass over the image queries, applied to all queries,
            any key a candidate.
        seed: seeds this processor's torch.Generator for control="random" and
            value_target="noise"; every call draws afresh from it, so a run is reproducible;
            :meth:`reset` reseeds. Without it those draws use the device's global generator.
        generator: the torch.Generator that ``seed`` seeds (default: a new CPU one). A CUDA
            generator draws on the device, so the calls can be replayed from a CUDA graph
            that registers it (sinkattn.graphs.ForwardGraphs(generators=...)).
        tracer: a :class:`sinkattn.tracing.SinkTracer` (or anything with ``record(...)``).
        text_len: Flux single-stream blocks only, the number of text tokens at the front of
            the joined sequence, when it cannot be learned from the double-stream blocks
            (e.g. when this processor is installed on the single blocks alone).
    """

    # Set by diffusers' ModelMixin.set_attention_backend / enable_parallelism on every processor
    # that has them: the calls this processor leaves alone then go through that backend.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, k: int = 1, path: str = "score", select: str = "head", control: str = "sink",
                 eta: float = 0.0, mass_queries: str = "image", apply_queries: str = "all",
                 candidates: str = "all", seed: int | None = None, tracer=None, text_len: int | None = None,
                 eta_mode: str = "logit", value_target: str = "zero", fixed=(), value_noise_std: float = 0.1,
                 generator: torch.Generator | None = None):
        from ..reference import ETA_MODES, PATHS, SELECTS, VALUE_TARGETS
        from ..selection import CONTROLS

        for name, value, choices in (("path", path, PATHS), ("select", select, SELECTS), ("control", control, tuple(CONTROLS)),
                                     ("eta_mode", eta_mode, ETA_MODES), ("value_target", value_target, VALUE_TARGETS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.settings = SinkSettings(k=k, path=path, select=select, control=control, eta=float(eta),
                                     mass_queries=mass_queries, apply_queries=apply_queries, candidates=candidates,
                                     eta_mode=eta_mode, value_target=value_target, value_noise_std=float(value_noise_std),
                                     fixed=(fixed,) if isinstance(fixed, str) else tuple(fixed))
        self.seed = seed
        if generator is not None and seed is None:
            raise ValueError("generator is seeded by seed: give both (or neither)")
        self.generator = None if seed is None else (generator or torch.Generator(device="cpu")).manual_seed(seed)
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
                f"fixed={s.fixed!r}, value_noise_std={s.value_noise_std}, seed={self.seed})")

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
                 image_rotary_emb=None, *args, temb=None, encoder_hidden_states_mask=None, ip_adapter_masks=None,
                 ip_hidden_states=None, **kwargs):
        # diffusers hands a processor only the keywords its __call__ names and drops the rest
        # with a log line. The per-call options of stock processors that this one does not
        # support are named here so that a call using them fails instead of running without
        # them. Flux and Wan pass their rotary embedding as the fifth positional argument.
        # encoder_hidden_states_mask (Qwen-Image's text mask) is taken by the kinds that use it
        # (their row says text_mask=True) and refused by every other.
        unsupported = {name: value for name, value in (("ip_adapter_masks", ip_adapter_masks),
                                                       ("ip_hidden_states", ip_hidden_states)) if value is not None}
        unsupported.update(kwargs)
        if args or unsupported:
            raise TypeError(f"SinkSuppressProcessor does not support {sorted(unsupported) or f'{len(args)} extra arguments'}"
                            f" in a {type(attn).__name__} call (it would run without them)")
        inputs = CallInputs(hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, temb,
                            encoder_hidden_states_mask)
        kind = kind_of(attn, inputs)
        if encoder_hidden_states_mask is not None and not kind.text_mask:
            raise TypeError(f"SinkSuppressProcessor does not support ['encoder_hidden_states_mask'] in a "
                            f"{type(attn).__name__} call laid out as {kind.name!r} (it would run without it)")
        call = kind.prepare(self, attn, inputs)
        name, index = self.layer_of(attn)
        active = self.gate is None or self.gate(name)
        q_tokens, k_tokens = tokens_for(kind, call.q.shape[2], call.k.shape[2], call.n_text, call.cross)
        # The calls left alone: torch's SDPA (sink_core's own, plain=None) unless a backend was
        # chosen, and the stock form of the mask where the row gave the op another. No bound
        # method is made here: torch 2.11's dynamo cannot take the truth value of one made
        # inside a compiled region (sink_core tests `plain or ...`) and breaks the graph.
        plain = None
        if call.stock_mask is not None or self._attention_backend is not None or self._parallel_config is not None:
            def plain(q, k, v, attention_mask, scale, stock=call.stock_mask, processor=self):
                return processor._plain(q, k, v, attention_mask if stock is None else stock, scale)
        out, record = sink_core(call.q, call.k, call.v, self.settings, q_tokens, k_tokens, active=active,
                                want_mass=self.tracer is not None, attention_mask=call.mask,
                                generator=self.generator, plain=plain)
        if record is not None:
            self.tracer.record(layer=name, layer_index=index, family=kind.name, call=record,
                               clock=self.clock, intervened=active and record.sinks is not None)
        return call.finish(out.to(call.q.dtype))

    def _plain(self, q, k, v, attention_mask, scale):
        """Attention where nothing is intervened, through diffusers' dispatcher when a backend
        was chosen with ``set_attention_backend`` (flash, sage, context parallel...), else
        torch's SDPA as the stock processors call it."""
        backend = getattr(self, "_attention_backend", None)
        parallel = getattr(self, "_parallel_config", None)
        if backend is None and parallel is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                                  scale=scale)
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        out = dispatch_attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask,
                                    scale=scale, backend=backend, parallel_config=parallel)
        return out.transpose(1, 2)

    def flux_text_len(self, n: int, n_text: int | None) -> int:
        """Text tokens at the front of a Flux call of ``n`` tokens: ``n_text`` in a double-stream
        block (remembered for the single-stream blocks of the same forward), else learned."""
        if n_text is not None:
            self._flux_text = (n_text, n)
            return n_text
        return self._single_text_len(n)

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
