"""The executable form of SPEC section 2, in plain PyTorch, written to be obviously right.

Everything else in sinkattn (the Triton kernels, the CPU fallback of the public op, the
processors' tests, the benchmarks) is checked against this module. It imports nothing of
ours, so a bug in shared code cannot hide from the equivalence tests.

It computes in float32 for half-precision and float32 inputs and in float64 for float64
inputs (upcast the inputs to get a float64 reference), and walks the queries in chunks so
that it never holds more than ``chunk_size * Nk`` scores per (batch, head).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SinkAttentionResult", "sink_attention", "resolve_range", "as_generator"]

PATHS = ("score", "value", "both", "none")
SELECTS = ("head", "shared")
CONTROLS = ("sink", "random", "bottom", "high_outgoing_query", "high_outgoing_query_ablate")
# Controls that pick query rows (by each row's largest probability) instead of keys, and what
# they do to those rows: the original's anti-sink control adds one large negative constant
# to every logit of the row (QUERY_SHIFT, as its -65000 mask); the ablating one replaces the
# row's output by eta * O + (1 - eta) * target.
QUERY_CONTROLS = {"high_outgoing_query": "shift", "high_outgoing_query_ablate": "ablate"}
QUERY_SHIFT = -65000.0
ETA_MODES = ("logit", "prob")
# The value path's replacement: 0, the head's mean value vector, or Gaussian noise of std
# ``value_noise_std`` drawn per (b, h, selected key, channel); a tensor (B, H, top_k, Dv)
# gives one replacement vector per selected key in selection order.
VALUE_TARGETS = ("zero", "mean", "noise")


class SinkAttentionResult(NamedTuple):
    """out (B, H, Nq, Dv) in the input dtype; mass (B, H, Nk) float32 (float64 for float64
    inputs), the per-key attention mass of the unintervened attention, or None on the plain
    path; sinks: int64 indices of the intervened keys, (B, H, top_k) for ``select="head"``
    and (B, top_k) for ``select="shared"``, in selection order."""

    out: Tensor
    mass: Tensor | None
    sinks: Tensor


def resolve_range(name: str, rng, n: int) -> tuple[int, int]:
    """A half-open (start, stop) pair, a slice (step 1) or None (everything) as a pair of
    ints with 0 <= start < stop <= n."""
    if rng is None:
        return 0, n
    if isinstance(rng, slice):
        if rng.step not in (None, 1):
            raise ValueError(f"{name}: a slice must have step 1, got {rng!r}")
        start = 0 if rng.start is None else rng.start
        stop = n if rng.stop is None else rng.stop
    elif isinstance(rng, (tuple, list)) and len(rng) == 2:
        start, stop = rng
    else:
        raise TypeError(f"{name} must be None, a (start, stop) pair or a slice, got {rng!r}")
    if isinstance(start, bool) or isinstance(stop, bool) or not all(
        isinstance(x, int) or (isinstance(x, Tensor) and x.dim() == 0) for x in (start, stop)
    ):
        raise TypeError(f"{name} bounds must be ints, got {rng!r}")
    start, stop = int(start), int(stop)
    if not 0 <= start < stop <= n:
        raise ValueError(
            f"{name}={rng!r} is outside the sequence or empty: need 0 <= start < stop <= {n}"
        )
    return start, stop


def as_generator(generator) -> torch.Generator | None:
    """A torch.Generator from a Generator, an int seed (a CPU generator) or None."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device="cpu").manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


def _bias_of(attn_mask, q: Tensor, k: Tensor, dtype) -> Tensor | None:
    """The mask as an additive bias of four dims (True = keep -> 0, False -> -inf)."""
    if attn_mask is None:
        return None
    bias = attn_mask
    if bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=dtype, device=q.device).masked_fill(~bias.to(q.device), float("-inf"))
    bias = bias.to(device=q.device, dtype=dtype)
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    torch.broadcast_shapes(bias.shape, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
    return bias


def _scores(q: Tensor, k: Tensor, scale: float, bias: Tensor | None, start: int, stop: int) -> Tensor:
    """scale * q k^T (+ the mask's bias) of the query rows [start, stop): (B, H, rows, Nk)."""
    scores = scale * q[:, :, start:stop] @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + (bias if bias.shape[2] == 1 else bias[:, :, start:stop])
    return scores


def _key_mass(q: Tensor, k: Tensor, scale: float, rows: tuple[int, int], chunk: int, bias=None) -> Tensor:
    """m[b, h, j] = mean over the query rows of softmax(scale * q k^T + bias)[b, h, row, j]."""
    total = torch.zeros(k.shape[:3], dtype=q.dtype, device=q.device)
    for start in range(rows[0], rows[1], chunk):
        stop = min(start + chunk, rows[1])
        probs = torch.softmax(_scores(q, k, scale, bias, start, stop), dim=-1)
        total += probs.sum(dim=-2)
    return total / (rows[1] - rows[0])


def _masked_keys(bias: Tensor | None, shape, rows: tuple[int, int], select: str) -> Tensor | None:
    """(B, H, Nk) or (B, Nk) for shared: keys the mask removes for every mass query (of
    every head, for shared selection). They are never selected."""
    if bias is None:
        return None
    window = bias if bias.shape[2] == 1 else bias[:, :, rows[0]:rows[1]]
    masked = torch.isneginf(window).all(dim=2).expand(shape)
    return masked if select == "head" else masked.all(dim=1)


def _select(mass, shape, top_k, select, control, candidates, generator, device, masked=None) -> Tensor:
    """Indices of the top_k keys per group, taken from the candidate range, in order; keys
    in ``masked`` (per group) go last whatever their score."""
    c0, c1 = candidates
    if control == "random":
        # A uniform subset of the candidates: the first top_k of a random permutation,
        # drawn as argsort of uniform numbers on the generator's device (CPU for a seed).
        draw_device = generator.device if generator is not None else device
        u = torch.rand((*shape, c1 - c0), generator=generator, device=draw_device).to(device)
        if masked is not None:
            u = u.masked_fill(masked[..., c0:c1], float("inf"))
        order = torch.sort(u, dim=-1, stable=True).indices
    else:
        per_group = (mass if select == "head" else mass.mean(dim=1))[..., c0:c1]
        if masked is not None:
            per_group = per_group.masked_fill(masked[..., c0:c1], float("-inf") if control == "sink" else float("inf"))
        # Stable sorts keep equal masses in index order: ties break toward the lower index.
        order = torch.sort(per_group, dim=-1, descending=control == "sink", stable=True).indices
    return (order[..., :top_k] + c0).to(device=device, dtype=torch.int64)


def _per_key(vectors: Tensor, chosen: Tensor, vc: Tensor, path: str) -> Tensor:
    """(B, H, Nk, Dv): the replacement vector of every selected key (B, H, top_k, Dv) at its
    key, zero elsewhere; a key selected twice takes its first vector."""
    batch, heads, n_k, dv = vc.shape
    if tuple(vectors.shape) != (batch, heads, chosen.shape[-1], dv):
        raise ValueError(f"value_target vectors must have shape (B, H, top_k, Dv) = "
                         f"{(batch, heads, chosen.shape[-1], dv)}, got {tuple(vectors.shape)}")
    full = torch.zeros_like(vc)
    if path == "none" or chosen.shape[-1] == 0:
        return full
    idx = chosen if chosen.dim() == 3 else chosen[:, None, :].expand(batch, heads, -1)
    for i in reversed(range(idx.shape[-1])):  # the first listed vector is written last
        full.scatter_(2, idx[..., i:i + 1, None].expand(-1, -1, -1, dv), vectors[:, :, i:i + 1])
    return full


def _query_control(qc, kc, vc, scale, top_k, select, effect, eta, value_target, mass_rows, path, mass, chunk, dtype,
                   bias=None):
    """The query controls: the top_k mass-query rows by their largest probability (per head,
    or by the head mean for select="shared"), then their effect (QUERY_CONTROLS) unless
    path is "none"."""
    n_q = qc.shape[2]
    scores = torch.cat([_scores(qc, kc, scale, bias, a, min(a + chunk, n_q)) for a in range(0, n_q, chunk)], dim=2)
    probs = torch.softmax(scores, dim=-1)
    peak = probs.amax(dim=-1)  # (B, H, Nq)
    per_group = peak if select == "head" else peak.mean(dim=1)
    window = per_group[..., mass_rows[0]:mass_rows[1]]
    chosen = torch.sort(window, dim=-1, descending=True, stable=True).indices[..., :top_k] + mass_rows[0]
    rows = chosen if chosen.dim() == 3 else chosen[:, None, :].expand(qc.shape[0], qc.shape[1], -1)
    picked = torch.zeros(peak.shape, dtype=torch.bool, device=qc.device).scatter_(-1, rows, True)[..., None]
    out = probs @ vc
    if path != "none" and effect == "shift":
        out = torch.softmax(torch.where(picked, scores + QUERY_SHIFT, scores), dim=-1) @ vc
    elif path != "none":
        target = vc.mean(dim=2, keepdim=True) if value_target == "mean" else torch.zeros_like(out[:, :, :1])
        out = torch.where(picked, eta * out + (1 - eta) * target, out)
    if mass is not None:
        mass = mass.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return SinkAttentionResult(out.to(dtype), mass, chosen.to(torch.int64))


def sink_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    top_k: int | None = None,
    path: str = "score",
    select: str = "head",
    control: str = "sink",
    eta: float = 0.0,
    mass_queries=None,
    candidates=None,
    apply_queries=None,
    sinks: Tensor | None = None,
    scale: float | None = None,
    generator: torch.Generator | int | None = None,
    return_mass: bool | None = None,
    chunk_size: int = 1024,
    compute_dtype: torch.dtype | None = None,
    eta_mode: str = "logit",
    value_target: str | Tensor = "zero",
    attn_mask: Tensor | None = None,
    value_noise_std: float = 0.1,
) -> SinkAttentionResult:
    """Attention with the top_k keys of largest attention mass suppressed (SPEC section 2).

    q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv). ``top_k`` defaults to 1, or to
    ``sinks.shape[-1]`` when explicit sinks are given. Mass is computed unless the call is
    plain attention (top_k = 0 and path != "none"); ``return_mass`` forces it on or off.
    ``compute_dtype`` overrides the arithmetic dtype (float32, or float64 for float64
    inputs); the tests set it to the input dtype to measure PyTorch's own rounding error.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if select not in SELECTS:
        raise ValueError(f"select must be one of {SELECTS}, got {select!r}")
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if eta_mode not in ETA_MODES:
        raise ValueError(f"eta_mode must be one of {ETA_MODES}, got {eta_mode!r}")
    vectors = isinstance(value_target, Tensor)
    if not vectors and value_target not in VALUE_TARGETS:
        raise ValueError(f"value_target must be one of {VALUE_TARGETS} or a tensor, got {value_target!r}")
    if not (math.isfinite(float(value_noise_std)) and float(value_noise_std) >= 0):
        raise ValueError(f"value_noise_std must be a finite number >= 0, got {value_noise_std!r}")
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    scale = dim**-0.5 if scale is None else float(scale)
    mass_rows = resolve_range("mass_queries", mass_queries, n_q)
    cand = resolve_range("candidates", candidates, n_k)
    apply_rows = resolve_range("apply_queries", apply_queries, n_q)
    group_shape = (batch, heads) if select == "head" else (batch,)
    if sinks is not None:
        top_k = sinks.shape[-1] if top_k is None else top_k
        if top_k != sinks.shape[-1]:
            raise ValueError(f"top_k={top_k} does not match sinks.shape[-1]={sinks.shape[-1]}")
    top_k = 1 if top_k is None else int(top_k)
    query_effect = QUERY_CONTROLS.get(control) if sinks is None else None
    if query_effect and (vectors or value_target == "noise"):
        raise ValueError("value_target noise or vectors replace selected keys' values: they need a key control")
    pool = mass_rows if query_effect else cand  # query controls pick among the mass queries
    if top_k < 0 or top_k > pool[1] - pool[0]:
        raise ValueError(f"top_k={top_k} must be in [0, {pool[1] - pool[0]}] (the number of candidates)")
    removed_per_row = top_k if sinks is None or top_k == 0 else max(len(set(row.tolist())) for row in sinks.reshape(-1, top_k))
    if path in ("score", "both") and float(eta) == 0.0 and removed_per_row >= n_k and not query_effect:
        raise ValueError(f"top_k={top_k} on the score path with eta=0 would remove every key of a row")

    gen = as_generator(generator)
    compute = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    qc, kc, vc = (t.to(compute) for t in (q, k, v))
    bias = _bias_of(attn_mask, q, k, compute)
    plain = top_k == 0 and path != "none"
    want_mass = (not plain) if return_mass is None else return_mass
    mass = _key_mass(qc, kc, scale, mass_rows, chunk_size, bias) if want_mass else None

    if sinks is not None:
        chosen = sinks.to(device=q.device, dtype=torch.int64)
        group_shape = tuple(chosen.shape[:-1])
    elif top_k == 0:
        chosen = torch.zeros((*group_shape, 0), dtype=torch.int64, device=q.device)
    elif query_effect:
        return _query_control(qc, kc, vc, scale, top_k, select, query_effect, float(eta), value_target, mass_rows,
                              path, mass, chunk_size, q.dtype, bias)
    else:
        sel_mass = mass if mass is not None else _key_mass(qc, kc, scale, mass_rows, chunk_size, bias)
        masked = _masked_keys(bias, (batch, heads, n_k), mass_rows, select)
        chosen = _select(sel_mass, group_shape, top_k, select, control, cand, gen, q.device, masked)

    # The intervened keys of every (b, h) as a 0/1 indicator over the keys.
    selected = torch.zeros((batch, heads, n_k), dtype=compute, device=q.device)
    if path != "none" and chosen.shape[-1] > 0:
        idx = chosen if chosen.dim() == 3 else chosen[:, None, :].expand(batch, heads, -1)
        selected.scatter_(-1, idx, 1.0)
    on_scores = path in ("score", "both")
    on_values = path in ("value", "both")
    eta = float(eta)
    # Value path: v_j <- eta v_j + (1 - eta) target_j, target_j 0, the head's mean value
    # vector, or the j-th replacement vector (noise is drawn here, after the selection's draw).
    if not vectors and value_target == "noise" and on_values and chosen.shape[-1] > 0:
        draw_device = gen.device if gen is not None else q.device
        value_target = float(value_noise_std) * torch.randn((batch, heads, chosen.shape[-1], v.shape[-1]),
                                                            generator=gen, device=draw_device)
    if isinstance(value_target, Tensor):
        target = _per_key(value_target.to(device=q.device, dtype=compute), chosen, vc, path)
    elif value_target == "mean":
        target = vc.mean(dim=2, keepdim=True)
    else:
        target = torch.zeros_like(vc[:, :, :1])
    v_new = torch.where(selected[..., None] > 0, eta * vc + (1 - eta) * target, vc) if on_values else vc
    log_weight = torch.log(1 - (1 - eta) * selected)  # eta on the selected keys, 1 elsewhere; -inf at eta = 0

    out = torch.empty((batch, heads, n_q, v.shape[-1]), dtype=compute, device=q.device)
    for start in range(0, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        scores = _scores(qc, kc, scale, bias, start, stop)
        rows = torch.arange(start, stop, device=q.device)
        applied = ((rows >= apply_rows[0]) & (rows < apply_rows[1]))[None, None, :, None]
        probs = torch.softmax(scores, dim=-1)
        new_probs = probs
        if on_scores and eta_mode == "logit":
            new_probs = torch.softmax(scores + log_weight[:, :, None, :], dim=-1)
        elif on_scores:
            # prob mode: p_j -> eta p_j on the selected keys, the others scaled by
            # (1 - eta P_J) / (1 - P_J) so that the row still sums to 1.
            sel = selected[:, :, None, :]
            p_sel = (probs * sel).sum(-1, keepdim=True)
            rest = (probs * (1 - sel)).sum(-1, keepdim=True)  # not 1 - p_sel: that cancels as p_sel -> 1
            keep = torch.where(rest > 0, (1 - eta * p_sel) / rest.clamp_min(torch.finfo(compute).tiny), 0.0)
            new_probs = torch.where(sel > 0, eta * probs, keep * probs)
        if on_scores and eta == 0.0 and bias is not None:
            # A row whose every unmasked key is removed (a padding mask keeping no more keys
            # than are removed) keeps its plain attention: there is nothing left to attend to.
            left = torch.isfinite(scores) & (selected[:, :, None, :] == 0)
            new_probs = torch.where(left.any(-1, keepdim=True), new_probs, probs)
        out[:, :, start:stop] = torch.where(applied, new_probs @ v_new, probs @ vc)
    if mass is not None:
        mass = mass.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    return SinkAttentionResult(out.to(q.dtype), mass, chosen)

