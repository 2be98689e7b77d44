"""Argument checking for the public op: every bad input becomes a ValueError or TypeError
that names the argument, before anything reaches a kernel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import ETA_MODES, PATHS, SELECTS, VALUE_TARGETS, as_generator, resolve_range
from .selection import CONTROLS, control_of

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class SinkCall:
    """A checked call: ranges resolved to (start, stop) ints, top_k resolved."""

    top_k: int
    path: str
    select: str
    control: str
    eta: float
    mass_rows: tuple[int, int]
    candidates: tuple[int, int]
    apply_rows: tuple[int, int]
    sinks: Tensor | None
    scale: float
    generator: torch.Generator | None
    want_mass: bool
    eta_mode: str = "logit"
    value_target: str = "zero"


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have 4 dims (B, H, N, D), got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32 (float64 on the reference path)")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride(-1) == 1 (last dim contiguous), got strides {t.stride()}")
    if any(s == 0 for s in t.shape):
        raise ValueError(f"{name} has an empty dimension: shape {tuple(t.shape)}")


def _check_mask(attn_mask, q: Tensor, k: Tensor) -> None:
    if attn_mask is None:
        return
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and not attn_mask.dtype.is_floating_point:
        raise TypeError(f"attn_mask must be boolean (True = keep) or floating (additive), got {attn_mask.dtype}")
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        if attn_mask.dim() > 4 or torch.broadcast_shapes(attn_mask.shape, full) != full:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)} does not broadcast to (B, H, Nq, Nk) = {full}") from None


def _removes_a_whole_row(sinks: Tensor | None, n_k: int) -> bool:
    """True when some row of the intervened set holds all n_k keys: always for selection
    (top_k >= n_k distinct keys), for explicit sinks only if a row's distinct indices do
    (repeats count once)."""
    if sinks is None:
        return True
    ordered = sinks.sort(dim=-1).values
    distinct = 1 + (ordered[..., 1:] != ordered[..., :-1]).sum(dim=-1)
    return bool((distinct >= n_k).any())


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_call(
    q, k, v, top_k, path, select, control, eta, mass_queries, candidates, apply_queries,
    sinks, scale, generator, return_mass, eta_mode="logit", value_target="zero", attn_mask=None,
) -> SinkCall:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    batch, heads, n_q, dim = q.shape
    if k.shape[:2] != (batch, heads):
        raise ValueError(f"k shape {tuple(k.shape)} does not match q's (B, H) = {(batch, heads)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v shape {tuple(v.shape)} does not match k's (B, H, Nk) = {tuple(k.shape[:3])}")
    if k.shape[3] != dim:
        raise ValueError(f"k head dim {k.shape[3]} does not match q head dim {dim}")
    n_k = k.shape[2]

    _check_mask(attn_mask, q, k)
    path = _check_choice("path", path, PATHS)
    select = _check_choice("select", select, SELECTS)
    control = _check_choice("control", control, tuple(CONTROLS))
    eta_mode = _check_choice("eta_mode", eta_mode, ETA_MODES)
    value_target = _check_choice("value_target", value_target, VALUE_TARGETS)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)):
        raise TypeError(f"eta must be a number in [0, 1], got {eta!r}")
    if not (math.isfinite(eta) and 0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    scale = dim**-0.5 if scale is None else float(scale)
    mass_rows = resolve_range("mass_queries", mass_queries, n_q)
    cand = resolve_range("candidates", candidates, n_k)
    apply_rows = resolve_range("apply_queries", apply_queries, n_q)

    if sinks is not None:
        if not isinstance(sinks, Tensor):
            raise TypeError(f"sinks must be a LongTensor or None, got {type(sinks).__name__}")
        if sinks.dtype.is_floating_point or sinks.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise TypeError(f"sinks must be an integer tensor (int64), got {sinks.dtype}")
        if sinks.dim() == 3 and tuple(sinks.shape[:2]) == (batch, heads):
            select = "head"
        elif sinks.dim() == 2 and sinks.shape[0] == batch:
            select = "shared"
        else:
            raise ValueError(f"sinks must have shape (B, H, top_k) = ({batch}, {heads}, t) or (B, top_k), got {tuple(sinks.shape)}")
        if sinks.numel() and (int(sinks.min()) < 0 or int(sinks.max()) >= n_k):
            raise ValueError(f"sinks holds indices outside [0, {n_k})")
        if candidates is not None and sinks.numel() and (int(sinks.min()) < cand[0] or int(sinks.max()) >= cand[1]):
            raise ValueError(f"sinks holds keys outside candidates {cand}: explicit sinks skip selection, so "
                             "give candidates only to check them, and then hold every sink inside")
        if top_k is not None and top_k != sinks.shape[-1]:
            raise ValueError(f"top_k={top_k} does not match sinks.shape[-1]={sinks.shape[-1]}")
        top_k = sinks.shape[-1]
        sinks = sinks.to(device=q.device, dtype=torch.int64)
    top_k = 1 if top_k is None else top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {top_k!r}")
    on_queries = control_of(control).side == "queries" and sinks is None
    # Query controls pick among the mass queries, key controls among the candidate keys.
    n_cand = (mass_rows[1] - mass_rows[0]) if on_queries else (cand[1] - cand[0])
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if sinks is None and top_k > n_cand:
        what = "mass queries" if on_queries else "candidates"
        raise ValueError(f"top_k={top_k} is larger than the number of {what} ({n_cand})")
    if (path in ("score", "both") and eta == 0.0 and top_k >= n_k and not on_queries
            and _removes_a_whole_row(sinks, n_k)):
        raise ValueError(f"top_k={top_k} on the score path with eta=0 would remove every key of a row (Nk={n_k})")
    if return_mass is not None and not isinstance(return_mass, bool):
        raise TypeError(f"return_mass must be a bool or None, got {return_mass!r}")
    plain = top_k == 0 and path != "none"
    want_mass = (not plain) if return_mass is None else return_mass
    return SinkCall(
        top_k=top_k, path=path, select=select, control=control, eta=float(eta),
        mass_rows=mass_rows, candidates=cand, apply_rows=apply_rows, sinks=sinks,
        scale=scale, generator=as_generator(generator), want_mass=want_mass,
        eta_mode=eta_mode, value_target=value_target,
    )
