"""Argument checking for the public op: every bad input becomes a ValueError or TypeError
that names the argument, before anything reaches a kernel.

A call is checked once per (shapes, strides, dtypes, devices, options): the checked call is
cached by that key, so a model's thousands of calls with the same layout pay a dictionary
lookup (issue 15). Calls with explicit ``sinks`` are checked every time (their values are
data: the range check reads them, one host synchronisation), except while a CUDA graph is
being captured, where reading device values is not allowed and the check is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import ETA_MODES, PATHS, SELECTS, VALUE_TARGETS, resolve_range
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
    want_mass: bool
    eta_mode: str = "logit"
    value_target: str | Tensor = "zero"  # a name, or (B, H, top_k, Dv) replacement vectors
    value_noise_std: float = 0.1


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
    (repeats count once; not read while a CUDA graph is captured)."""
    if sinks is None:
        return True
    if _capturing(sinks):
        return False
    ordered = sinks.sort(dim=-1).values
    distinct = 1 + (ordered[..., 1:] != ordered[..., :-1]).sum(dim=-1)
    return bool((distinct >= n_k).any())


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _capturing(t: Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


_CHECKED: dict = {}
_CHECKED_MAX = 4096


def _range_key(rng):
    """A hashable stand-in for a range argument, or a TypeError for one not worth caching
    (0-d tensor bounds, odd types: those are checked every call)."""
    if rng is None:
        return None
    if type(rng) is tuple and len(rng) == 2 and type(rng[0]) is int and type(rng[1]) is int:
        return rng
    if type(rng) is slice and all(x is None or type(x) is int for x in (rng.start, rng.stop, rng.step)):
        return ("slice", rng.start, rng.stop, rng.step)
    raise TypeError


def _call_key(q, k, v, top_k, path, select, control, eta, mass_queries, candidates, apply_queries, scale,
              return_mass, eta_mode, value_target, value_noise_std):
    """What a checked call depends on, or None when the call is checked every time. The
    types of the scalars are part of it (True == 1, but top_k=True is refused)."""
    if (not (type(q) is Tensor and type(k) is Tensor and type(v) is Tensor) or torch.compiler.is_compiling()
            or isinstance(value_target, Tensor)):
        return None
    try:
        key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
               q.device, k.device, v.device, top_k, type(top_k), path, select, control, eta, type(eta),
               _range_key(mass_queries), _range_key(candidates), _range_key(apply_queries), scale, type(scale),
               return_mass, eta_mode, value_target, value_noise_std, type(value_noise_std))
        hash(key)
    except TypeError:
        return None
    return key


def check_call(
    q, k, v, top_k, path, select, control, eta, mass_queries, candidates, apply_queries,
    sinks, scale, return_mass, eta_mode="logit", value_target="zero", attn_mask=None, value_noise_std=0.1,
) -> SinkCall:
    """The checked call (ranges resolved, top_k and scale resolved), or a ValueError or
    TypeError naming the argument. Cached by layout and options unless ``sinks`` or
    ``attn_mask`` is given."""
    key = None
    if sinks is None and attn_mask is None:
        key = _call_key(q, k, v, top_k, path, select, control, eta, mass_queries, candidates, apply_queries,
                        scale, return_mass, eta_mode, value_target, value_noise_std)
        checked = _CHECKED.get(key) if key is not None else None
        if checked is not None:
            return checked
    call = _check(q, k, v, top_k, path, select, control, eta, mass_queries, candidates, apply_queries,
                  sinks, scale, return_mass, eta_mode, value_target, attn_mask, value_noise_std)
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = call
    return call


def _check(
    q, k, v, top_k, path, select, control, eta, mass_queries, candidates, apply_queries,
    sinks, scale, return_mass, eta_mode, value_target, attn_mask, value_noise_std,
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
    vectors = isinstance(value_target, Tensor)
    if not vectors:
        value_target = _check_choice("value_target", value_target, VALUE_TARGETS)
    if (isinstance(value_noise_std, bool) or not isinstance(value_noise_std, (int, float))
            or not (math.isfinite(value_noise_std) and value_noise_std >= 0)):
        raise ValueError(f"value_noise_std must be a finite number >= 0, got {value_noise_std!r}")
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
        if sinks.numel() and not _capturing(sinks):
            low, high = (int(x) for x in torch.stack([sinks.min(), sinks.max()]).tolist())
            if low < 0 or high >= n_k:
                raise ValueError(f"sinks holds indices outside [0, {n_k})")
            if candidates is not None and (low < cand[0] or high >= cand[1]):
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
    if on_queries and (vectors or value_target == "noise"):
        raise ValueError(f"value_target={'vectors' if vectors else 'noise'} replaces the selected keys' values: "
                         f"it needs a key control, not {control!r}")
    if vectors:
        if value_target.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"value_target vectors must be floating point, got {value_target.dtype}")
        want = (batch, heads, top_k, v.shape[-1])
        if tuple(value_target.shape) != want:
            raise ValueError(f"value_target vectors must have shape (B, H, top_k, Dv) = {want}, "
                             f"got {tuple(value_target.shape)}")
        value_target = value_target.to(device=q.device)
    if return_mass is not None and not isinstance(return_mass, bool):
        raise TypeError(f"return_mass must be a bool or None, got {return_mass!r}")
    plain = top_k == 0 and path != "none"
    want_mass = (not plain) if return_mass is None else return_mass
    return SinkCall(
        top_k=top_k, path=path, select=select, control=control, eta=float(eta),
        mass_rows=mass_rows, candidates=cand, apply_rows=apply_rows, sinks=sinks,
        scale=scale, want_mass=want_mass,
        eta_mode=eta_mode, value_target=value_target, value_noise_std=float(value_noise_std),
    )
