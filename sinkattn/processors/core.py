"""The one function every family processor calls: attention over (B, H, N, D) views with
the sink intervention, after the family has projected, normalised and rotated q, k, v.

The family differences that matter here are reduced to where the text tokens sit in the
query and key sequences (:class:`Tokens`). The user's ranges ("image", "text", "all") are
resolved against those positions per call, so one settings object serves SD3 (image first),
Flux (text first), SDXL self-attention (all image) and cross-attention (text keys only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import sink_attention

__all__ = ["SinkSettings", "Tokens", "sink_core", "token_range", "RANGE_NAMES"]

RANGE_NAMES = ("image", "text", "all")


@dataclass(frozen=True)
class SinkSettings:
    """The intervention, as the user wrote it (ranges by name, not by index)."""

    k: int = 1
    path: str = "score"
    select: str = "head"
    control: str = "sink"
    eta: float = 0.0
    mass_queries: str = "image"
    apply_queries: str = "all"
    candidates: str = "all"
    eta_mode: str = "logit"
    value_target: str = "zero"
    value_noise_std: float = 0.1
    # Fixed keys instead of selection, as "range:index" ("text:0" is the first text token,
    # "image:0" the first image token, whatever the family's token order): the original
    # study's index-0 experiments. The same keys in every head; k is ignored.
    fixed: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("mass_queries", "apply_queries", "candidates"):
            value = getattr(self, name)
            if value not in RANGE_NAMES:
                raise ValueError(f"{name} must be one of {RANGE_NAMES}, got {value!r}")
        object.__setattr__(self, "fixed", tuple(self.fixed))
        for spec in self.fixed:
            _parse_fixed(spec)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"k must be an int >= 0, got {self.k!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not (math.isfinite(float(self.value_noise_std)) and float(self.value_noise_std) >= 0):
            raise ValueError(f"value_noise_std must be a finite number >= 0, got {self.value_noise_std!r}")


@dataclass(frozen=True)
class Tokens:
    """A sequence of ``n`` tokens of which ``n_text`` are text, placed first or last."""

    n: int
    n_text: int = 0
    text_first: bool = False

    @property
    def text(self) -> tuple[int, int]:
        return (0, self.n_text) if self.text_first else (self.n - self.n_text, self.n)

    @property
    def image(self) -> tuple[int, int]:
        return (self.n_text, self.n) if self.text_first else (0, self.n - self.n_text)


def _parse_fixed(spec: str) -> tuple[str, int]:
    """ "text:0" -> ("text", 0); negative indices count from the end of the range."""
    name, _, index = str(spec).partition(":")
    try:
        position = int(index)
    except ValueError:
        position = None
    if name not in RANGE_NAMES or position is None:
        raise ValueError(f"fixed keys are 'RANGE:INDEX' with RANGE one of {RANGE_NAMES}, got {spec!r}")
    return name, position


def fixed_keys(specs: tuple[str, ...], tokens: Tokens) -> list[int] | None:
    """Absolute key indices of "range:index" specs in this call's keys; None when one of
    them does not exist here (e.g. "text:0" in SDXL self-attention: the layer is then left
    alone, as for an empty range)."""
    keys = []
    for spec in specs:
        name, position = _parse_fixed(spec)
        rng = token_range(name, tokens)
        if rng is None or not -(rng[1] - rng[0]) <= position < rng[1] - rng[0]:
            return None
        keys.append(rng[0] + position if position >= 0 else rng[1] + position)
    return keys


def token_range(name: str, tokens: Tokens) -> tuple[int, int] | None:
    """The half-open index range of "image", "text" or "all" tokens; None when empty
    (e.g. text queries in SDXL cross-attention, text keys in SD3.5's image-only attn2)."""
    start, stop = {"all": (0, tokens.n), "text": tokens.text, "image": tokens.image}[name]
    return (start, stop) if stop > start else None


@dataclass
class CallRecord:
    """What one attention call hands to a tracer: device tensors, no host syncs."""

    mass: Tensor                # (B, H, Nk) float32, unintervened
    sinks: Tensor | None        # (B, H, k) or (B, k) int64, the intervened keys; None if none
    keys: Tokens                # where the text keys are
    mass_queries: tuple[int, int]
    q: Tensor | None = None     # the call's q, k and scale, for tracers that sample per-query statistics
    k: Tensor | None = None
    scale: float | None = None


_FIXED_ON_DEVICE: dict = {}


def _on_device(keys: tuple[int, ...], device) -> Tensor:
    """The fixed keys as an int64 device tensor, made once per (keys, device): no
    host-to-device copy per call (a copy of pageable memory cannot be captured in a CUDA graph)."""
    found = _FIXED_ON_DEVICE.get((keys, device))
    if found is None:
        found = _FIXED_ON_DEVICE[(keys, device)] = torch.tensor(keys, dtype=torch.int64, device=device)
    return found


def _plain(q, k, v, attention_mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0,
                                          is_causal=False, scale=scale)


def sink_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    settings: SinkSettings,
    q_tokens: Tokens,
    k_tokens: Tokens,
    *,
    active: bool = True,
    want_mass: bool = False,
    attention_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    scale: float | None = None,
    plain=None,
) -> tuple[Tensor, CallRecord | None]:
    """Attention with the user's intervention, as the stock processors would compute it.

    q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv): diffusers' transposed views, handed
    to the op without copies. ``active=False`` (outside a gate) or ``settings.k == 0`` runs
    the stock math (``plain``, default torch's SDPA) unless ``want_mass`` (a tracer) asks for the key mass, which then
    comes from the op (top_k=0, path="none"). A range that is empty in this layer (text
    queries where there are none, text candidates in an image-only layer) means the layer
    has nothing to select: it runs unintervened.

    Returns (out (B, H, Nq, Dv) in the input dtype, CallRecord or None).
    """
    mass_rows = token_range(settings.mass_queries, q_tokens)
    candidates = token_range(settings.candidates, k_tokens)
    apply_rows = token_range(settings.apply_queries, q_tokens)
    top_k = settings.k if active else 0
    fixed = fixed_keys(settings.fixed, k_tokens) if settings.fixed and top_k > 0 else None
    if settings.fixed and top_k > 0:
        top_k = len(settings.fixed) if fixed is not None else 0
    if mass_rows is None or candidates is None or apply_rows is None:
        top_k = 0
    if top_k == 0 and not (want_mass and mass_rows is not None):
        return (plain or _plain)(q, k, v, attention_mask, scale), None
    path = settings.path if top_k > 0 else "none"
    explicit = None
    if fixed is not None and top_k > 0:
        explicit = _on_device(tuple(fixed), q.device).expand(q.shape[0], -1)
    out, mass, sinks = sink_attention(
        q, k, v, top_k=None if explicit is not None else top_k, path=path, select=settings.select,
        control=settings.control, eta=float(settings.eta), mass_queries=mass_rows,
        candidates=None if explicit is not None else (candidates or (0, k.shape[2])),
        apply_queries=apply_rows, scale=scale, generator=generator, return_mass=want_mass or None,
        sinks=explicit, eta_mode=settings.eta_mode, value_target=settings.value_target, attn_mask=attention_mask,
        value_noise_std=settings.value_noise_std,
    )
    record = None
    if want_mass:
        record = CallRecord(mass=mass, sinks=sinks if top_k > 0 else None, keys=k_tokens, mass_queries=mass_rows,
                            q=q, k=k, scale=scale)
    return out, record
