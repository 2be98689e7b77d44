"""The public op: check the call, then run it on the Triton kernels (CUDA tensors, or any
tensors under the Triton interpreter) or on the reference (everything else, with a one-time
warning).

The kernel pipeline is registered as one torch.library custom op, ``sinkattn::sink_attention``,
with a fake implementation, so torch.compile(fullgraph=True) traces models that call it.
The random control draws its uniform numbers outside the op (generators cannot cross the op
boundary) and hands them in; the default top-1 picks its key inside a kernel.

Per call on the study's default path (top-1 sink per head, score or value path) the host
does: one cached validation (sinkattn.validation), four kernel launches (forward with O and
the LSE, key mass with the top-1 in its epilogue, the correction, the flagged-tile pass with
its merge) and their output allocations; two launches when the keys are short (Nk <= 256,
``sinkattn.settings``' short_keys: the mass and the intervened attention with all keys in
one tile). No host synchronisation and no CPU tensor on that path, so it can be captured in a
CUDA graph (the random control too when its generator is on the device).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from . import reference
from .memo import ObjectMemo
from .reference import SinkAttentionResult, as_generator
from .selection import control_of, per_head, random_keys, random_uniforms, ranked, value_noise
from .settings import current as current_settings
from .validation import check_call

__all__ = ["sink_attention", "SinkAttentionResult", "kernels_available"]

# How the intervention reaches the output on the kernel path is ``sinkattn.settings``' route:
# "correction" (exact correction of the unintervened output with the selected keys, masked
# pass only for the rows that would lose accuracy) or "masked" (a second, masked attention
# pass for every row). The benchmark measures both; kernels/NOTES.md says why correction is
# the default.


def kernels_available(device: torch.device | None = None) -> bool:
    """True when calls on ``device`` run on the Triton kernels."""
    if current_settings().interpret:
        return _triton_importable()
    return device is not None and torch.device(device).type == "cuda" and _triton_importable()


_TRITON: list = []


def _triton_importable() -> bool:
    if not _TRITON:
        try:
            import triton  # noqa: F401
            _TRITON.append(True)
        except ImportError:
            _TRITON.append(False)
    return _TRITON[0]


_warned_reference: set = set()


def _warn_reference_once(reason: str) -> None:
    if torch.compiler.is_compiling():  # dynamo cannot trace warnings.warn; eager calls say it
        return
    if reason not in _warned_reference:
        _warned_reference.add(reason)
        warnings.warn(
            f"sinkattn: {reason}; using the PyTorch reference (exact, but it builds attention "
            "matrices chunk by chunk and is slow). Run on a CUDA device for the Triton kernels.",
            RuntimeWarning,
            stacklevel=3,
        )


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
    eta_mode: str = "logit",
    value_target: str | Tensor = "zero",
    attn_mask: Tensor | None = None,
    value_noise_std: float = 0.1,
) -> SinkAttentionResult:
    """Attention that finds the keys with the most attention mass and suppresses them.

    Args:
        q: (B, H, Nq, D), k: (B, H, Nk, D), v: (B, H, Nk, Dv); float16, bfloat16 or float32
            (float64 runs on the reference); any strides with stride(-1) == 1.
        top_k: keys intervened per group; 0 is plain attention. Default 1, or
            ``sinks.shape[-1]`` when explicit sinks are given.
        path: "score" (the selected keys' probabilities scaled by eta, see eta_mode),
            "value" (their value vectors v <- eta v + (1 - eta) target), "both" (the two
            together, as the original study's multilayer and phase runs) or "none" (no
            intervention: tracing).
        select: "head" (top_k per (b, h)) or "shared" (top_k per b by head-mean mass, the
            same keys in every head; the paper's counterfactual runs used top_k = k * H).
        control: "sink" (most mass), "random" (uniform over the candidates, reproducible
            from ``generator``) or "bottom" (least mass).
        eta: in [0, 1]; 0 removes the keys, 1 leaves attention unchanged.
        eta_mode: "logit" (logits += log(eta): the row renormalised) or "prob" (the original
            study's prob_scale: p_j -> eta p_j, the other keys scaled by (1 - eta P_J) /
            (1 - P_J), P_J the row's selected mass). The two agree at eta 0 and 1.
        value_target: the value path's v_j <- eta v_j + (1 - eta) target_j, with target_j
            "zero", "mean" (the head's mean value vector over all keys), "noise" (Gaussian,
            std ``value_noise_std``, drawn per (b, h, selected key, channel) from
            ``generator`` after the random control's draw: the original study's value noise,
            seeded here), or a (B, H, top_k, Dv) tensor: one vector per selected key, in
            selection order (a key listed twice takes its first). Noise and vectors need a
            key control.
        value_noise_std: the noise target's standard deviation (the original's 0.1).
        attn_mask: None, or a boolean (True = keep) or additive mask broadcastable to
            (B, H, Nq, Nk), as in SDPA. Probabilities, mass and selection are those of the
            masked attention; keys masked for every mass query are never selected; a row
            whose every unmasked key the score path removes keeps its plain attention. A
            key-padding mask (the same for every head and query) runs on the kernels, one
            call per batch row over its kept keys (one host synchronisation; once per
            call shape for a mask given to :func:`reuse_key_padding_plans`); other masks
            run on the reference (exact, float32, query chunks), with a one-time warning.
        mass_queries, candidates, apply_queries: half-open (start, stop) pairs or slices;
            None means all. Mass is averaged over ``mass_queries``, keys are chosen from
            ``candidates``, and the intervention applies to the ``apply_queries`` rows.
        sinks: explicit int64 indices, (B, H, top_k) or (B, top_k), skipping selection.
        scale: score scale, default D ** -0.5.
        generator: torch.Generator or int seed for control="random".
        return_mass: force the mass on or off (default: on unless the call is plain).

    Returns:
        SinkAttentionResult(out (B, H, Nq, Dv) in the input dtype, mass (B, H, Nk) float32
        of the unintervened attention or None, sinks int64 (B, H, top_k) or (B, top_k)).
    """
    call = check_call(q, k, v, top_k, path, select, control, eta, mass_queries, candidates,
                      apply_queries, sinks, scale, return_mass, eta_mode, value_target, attn_mask, value_noise_std)
    generator = as_generator(generator)
    kernels = q.dtype != torch.float64 and kernels_available(q.device)
    if kernels and attn_mask is not None and not _traced(q, k, v):  # compaction reads counts on the host
        plan = _padding_plan(call, attn_mask, q, k)
        if plan is not None:
            return _compacted(q, k, v, plan, call, generator)
    if not kernels or attn_mask is not None:
        if attn_mask is not None:
            _warn_reference_once("attention masks other than key padding are not in the kernels yet")
        elif q.dtype != torch.float64:
            _warn_reference_once(f"no Triton kernels for tensors on {q.device}")
        return reference.sink_attention(
            q, k, v, top_k=call.top_k, path=call.path, select=call.select, control=call.control,
            eta=call.eta, mass_queries=call.mass_rows, candidates=call.candidates,
            apply_queries=call.apply_rows, sinks=call.sinks, scale=call.scale,
            generator=generator, return_mass=call.want_mass, eta_mode=call.eta_mode,
            value_target=call.value_target, attn_mask=attn_mask, value_noise_std=call.value_noise_std,
        )
    explicit, uniform = call.sinks, None
    if explicit is None and call.top_k > 0 and control_of(call.control).rank == "uniform":
        groups = (q.shape[0], q.shape[1]) if call.select == "head" else (q.shape[0],)
        if call.top_k == 1:  # the smallest draw, picked inside a kernel
            uniform = random_uniforms(groups, call.candidates, generator, q.device)
        else:
            explicit = random_keys(groups, call.top_k, call.candidates, generator, q.device)
    value_target, vectors = _value_vectors(call, q, v, generator)
    # Eager calls skip the dispatcher: on the H200 machine's host a plain SDXL cross-attention
    # call took 364 us through the op and 115 us without it (probe1, in git: benchmarks/probes/README.md).
    # Anything that traces (torch.compile, export, fake or dispatch modes, tensor subclasses)
    # goes through the registered op.
    # Inputs that need gradients go through the op too: its autograd formula is registered there.
    if _traced(q, k, v) or _needs_grad(q, k, v):
        out, mass, chosen = torch.ops.sinkattn.sink_attention(
            q, k, v, explicit, uniform, call.top_k, call.path, call.select, call.control, call.eta,
            list(call.mass_rows), list(call.candidates), list(call.apply_rows), call.scale, call.want_mass,
            call.eta_mode, value_target, vectors)
    else:
        out, mass, chosen = _run_kernels(
            q, k, v, explicit, uniform, call.top_k, call.path, call.select, call.control, call.eta,
            call.mass_rows, call.candidates, call.apply_rows, call.scale, call.want_mass,
            call.eta_mode, value_target, vectors)
    return SinkAttentionResult(out, mass if call.want_mass else None, chosen)


class _Padding(NamedTuple):
    """How a key-padding-masked call runs on the kernels, per batch row: its kept keys
    (ascending, on the device), its candidates as a range of them, and its explicit sinks
    mapped to them (None when the call selects)."""
    kept: list
    candidates: list
    sinks: list


# Masks declared unchanging (reuse_key_padding_plans): mask -> {(batch, keys, top_k,
# candidates): the plan or None}.
_PLAN_MEMO = ObjectMemo(max_entries=64)


def reuse_key_padding_plans(attn_mask: Tensor) -> Tensor:
    """Declare that ``attn_mask`` will not change while it lives (the caller's promise): calls
    given it read their key-padding plan from the device (one host synchronisation) once per
    call shape and reuse it. The processors declare the masks they prepare once per forward,
    so a PixArt-Sigma forward synchronises once, not once per cross-attention layer. Returns
    the mask."""
    _PLAN_MEMO.put(attn_mask, {})
    return attn_mask


def _padding_plan(call, attn_mask: Tensor, q: Tensor, k: Tensor) -> _Padding | None:
    """The per-row plan when ``attn_mask`` is a key-padding mask that the kernels can take by
    leaving the masked keys out (the same for every head and query: False or -inf masks a
    key, True or 0 keeps it; every row keeps a key; no explicit sink on a masked key), else
    None. Calls whose draws or targets depend on the masked keys stay on the reference: the
    random control and value noise (drawn over all candidates there), query controls, and
    top_k over the kept candidates. Every check, count and range is read in one host
    synchronisation per call, or once per call shape for a mask given to
    :func:`reuse_key_padding_plans` (calls with explicit sinks read theirs every time)."""
    if (control_of(call.control).rank == "uniform" and call.sinks is None
            or control_of(call.control).side == "queries" and call.sinks is None
            or isinstance(call.value_target, str) and call.value_target == "noise"):
        return None
    plans = _PLAN_MEMO.get(attn_mask)
    if plans is None or call.sinks is not None:
        return _read_plan(call, attn_mask, q, k)
    key = (q.shape[0], k.shape[2], call.top_k, tuple(call.candidates))
    if key not in plans:
        plans[key] = _read_plan(call, attn_mask, q, k)
    return plans[key]


def _read_plan(call, attn_mask: Tensor, q: Tensor, k: Tensor) -> _Padding | None:
    """_padding_plan's device part: the checks, counts and ranges in one host read."""
    mask = attn_mask
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[2] != 1 or mask.shape[0] not in (1, q.shape[0]):
        return None
    if mask.dtype == torch.bool:
        keep, valid = mask, None
    else:
        keep = mask == 0
        valid = keep | (mask == float("-inf"))
    first = keep[:, :1, 0, :]  # (B or 1, 1, Nk)
    checks = [(keep == first[:, :, None, :]).all()]  # every head alike
    if valid is not None:
        checks.append(valid.all())
    batch = q.shape[0]
    keep = first[:, 0].expand(batch, k.shape[2])
    before = keep.cumsum(-1)  # kept keys up to and including each key
    counts = before[:, -1]
    c0, c1 = call.candidates
    lo = before[:, c0 - 1] if c0 > 0 else torch.zeros_like(counts)
    hi = before[:, c1 - 1]
    # Explicit keys on the score path at eta 0 could remove every kept key of a row (the
    # reference then keeps its plain attention): such calls stay there. With selection, a row
    # keeping no more keys than are selected is run without its score part (_compacted).
    removes_all = call.path in ("score", "both") and call.eta == 0.0 and call.sinks is not None
    checks += [counts.min() >= call.top_k + (1 if removes_all else 0), counts.min() > 0]
    mapped = None
    if call.sinks is None:
        checks.append((hi - lo).min() >= call.top_k)
    else:
        flat = call.sinks.reshape(batch, -1)
        checks.append(keep.gather(1, flat).all())  # a sink on a masked key: the reference decides
        mapped = (before.gather(1, flat) - 1).reshape(call.sinks.shape)
    ok = torch.stack([c.to(torch.int64) for c in checks]).min().reshape(1)
    host = torch.cat([ok, counts, lo, hi]).tolist()  # the call's one host synchronisation
    if not host[0]:
        return None
    counts, lo, hi = host[1:1 + batch], host[1 + batch:1 + 2 * batch], host[1 + 2 * batch:]
    order = torch.sort((~keep).to(torch.uint8), dim=-1, stable=True).indices  # kept keys first, ascending
    return _Padding(kept=[order[b, :counts[b]] for b in range(batch)], candidates=list(zip(lo, hi)),
                    sinks=[None if mapped is None else mapped[b:b + 1] for b in range(batch)])


def _compacted(q: Tensor, k: Tensor, v: Tensor, plan: _Padding, call, generator) -> SinkAttentionResult:
    """A key-padding-masked call as one kernel call per batch row over its kept keys (in
    order, so every key range stays a range): mass 0 and never selected for the masked keys,
    as the reference computes them; indices mapped back to the full sequence. A mean value
    target stays the mean over all keys (passed as per-key vectors)."""
    batch, heads = q.shape[:2]
    vectors = call.value_target if isinstance(call.value_target, Tensor) else None
    if isinstance(call.value_target, str) and call.value_target == "mean" and call.top_k > 0:
        vectors = v.float().mean(dim=2, keepdim=True).expand(batch, heads, call.top_k, v.shape[-1])
    value_target = call.value_target if vectors is None else vectors
    outs, masses, chosen = [], [], []
    for b, (index, (lo, hi), sinks_b) in enumerate(zip(plan.kept, plan.candidates, plan.sinks)):
        kb, vb = k[b:b + 1].index_select(2, index), v[b:b + 1].index_select(2, index)
        res = sink_attention(
            q[b:b + 1], kb, vb, top_k=None if sinks_b is not None else call.top_k,
            path=_path_of_row(call, index.numel(), sinks_b),
            select=call.select, control=call.control, eta=call.eta, mass_queries=call.mass_rows,
            candidates=None if sinks_b is not None else (lo, hi), apply_queries=call.apply_rows, sinks=sinks_b,
            scale=call.scale, generator=generator, return_mass=call.want_mass, eta_mode=call.eta_mode,
            value_target=value_target if vectors is None else vectors[b:b + 1], value_noise_std=call.value_noise_std)
        outs.append(res.out)
        if res.mass is not None:
            masses.append(torch.zeros((1, heads, k.shape[2]), dtype=res.mass.dtype, device=q.device)
                          .index_copy_(2, index, res.mass))
        chosen.append(index[res.sinks])
    mass = torch.cat(masses) if masses else None
    return SinkAttentionResult(torch.cat(outs), mass, torch.cat(chosen))


def _path_of_row(call, kept: int, sinks: Tensor | None) -> str:
    """The path a compacted batch row runs: the call's, except that a row whose every kept
    key is selected and removed on the score path (eta 0) keeps its plain attention, as the
    reference rules: its score part is dropped ("score" -> "none", "both" -> "value")."""
    emptied = sinks is None and call.eta == 0.0 and kept <= call.top_k
    if not emptied or call.path not in ("score", "both"):
        return call.path
    return "none" if call.path == "score" else "value"


def _value_vectors(call, q: Tensor, v: Tensor, generator) -> tuple[str, Tensor | None]:
    """The value target as the kernels take it: "zero", "mean", or "vectors" with the
    (B, H, top_k, Dv) replacement vectors (given, or the noise target drawn here: only when
    the value path is on and keys are selected, as the reference draws it)."""
    target = call.value_target
    if isinstance(target, Tensor):
        return "vectors", target
    if target != "noise":
        return target, None
    if call.path not in ("value", "both") or call.top_k == 0:
        return "zero", None
    shape = (q.shape[0], q.shape[1], call.top_k, v.shape[-1])
    return "vectors", value_noise(shape, call.value_noise_std, generator, q.device)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _traced(*tensors: Tensor) -> bool:
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or any(type(t) is not Tensor for t in tensors))


def _run_kernels(
    q: Tensor, k: Tensor, v: Tensor, sinks: Tensor | None, uniform: Tensor | None, top_k: int, path: str,
    select: str, control: str, eta: float, mass_rows: list[int], candidates: list[int], apply_rows: list[int],
    scale: float, want_mass: bool, eta_mode: str, value_target: str, vectors: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The kernel pipeline. ``sinks``: explicit keys; ``uniform`` (groups, candidates) float32:
    the random control's draws for its top-1 (the smallest wins); ``vectors``: the value
    target's (B, H, top_k, Dv) replacement vectors when ``value_target`` is "vectors"."""
    from . import launch

    dim, dim_v = q.shape[-1], v.shape[-1]
    width, width_v = launch.padded_head_dims(dim, dim_v)
    if (width, width_v) != (dim, dim_v):
        # Zero columns add nothing to q.k and give zero output columns: run at the blocks'
        # width, then cut the output back (scale is the caller's, from the true head dim).
        pad, pad_v = width - dim, width_v - dim_v
        widen = torch.nn.functional.pad
        out, mass, chosen = _run_kernels(
            widen(q, (0, pad)), widen(k, (0, pad)), widen(v, (0, pad_v)), sinks, uniform, top_k, path, select,
            control, eta, mass_rows, candidates, apply_rows, scale, want_mass, eta_mode, value_target,
            None if vectors is None else widen(vectors, (0, pad_v)))
        return out[..., :dim_v].contiguous(), mass, chosen
    settings = current_settings()
    mass_rows, candidates, apply_rows = tuple(mass_rows), tuple(candidates), tuple(apply_rows)
    rule = control_of(control)
    on_queries = rule.side == "queries" and sinks is None
    selecting = sinks is None and top_k > 0 and not on_queries
    need_mass = want_mass or (selecting and uniform is None)
    intervene = path != "none" and top_k > 0
    blend = intervene and not on_queries and _needs_blend(path, eta, eta_mode, value_target)
    if intervene and path == "both" and not blend:  # at eta = 0 the removed keys' values no longer count
        path = "score"
    # The default top-1 is picked by the kernel that computes the mass (no launch of its own).
    selection = None
    if selecting and top_k == 1 and need_mass:
        selection = launch.Selection(select == "shared", candidates, rule.rank == "largest", uniform)
    if not on_queries and not blend and (need_mass or intervene) and launch.fits_one_tile(q, k, v, settings):
        return _short_keys(q, k, v, sinks, uniform, top_k, path, select, control, eta, mass_rows, candidates,
                           apply_rows, scale, need_mass, intervene, selection)

    counters = launch.counters(q, settings) if intervene or need_mass else None
    # Keep O in float32 while a correction may still be applied to it.
    row_peak = launch.row_buffer(q) if on_queries and top_k > 0 else None
    out, lse = launch.attention(q, k, v, scale, out_dtype=torch.float32 if intervene else q.dtype,
                                row_peak=row_peak, counters=counters)
    heads_keys = None
    if selection is not None:
        mass, heads_keys = launch.key_mass(q, k, lse, scale, mass_rows, counters, selection)
        chosen = heads_keys if select == "head" else heads_keys[:, 0, :]
    else:
        mass = launch.key_mass(q, k, lse, scale, mass_rows, counters) if need_mass else _no_mass(q)
        chosen = _chosen_keys(q, sinks, uniform, top_k, select, control, row_peak if on_queries else mass,
                              mass_rows if on_queries else candidates)
    if not intervene:
        return out, mass, chosen
    heads = q.shape[1]
    if on_queries:
        return _query_effect(out, v, per_head(chosen, heads), rule.effect, eta, value_target, q.dtype), mass, chosen
    heads_sinks = heads_keys if heads_keys is not None else per_head(chosen, heads)
    if blend:
        return _blend(q, k, v, out, lse, heads_sinks, path, eta, eta_mode, value_target, vectors, apply_rows,
                      scale, counters, may_repeat=sinks is not None), mass, chosen
    if settings.route == "masked":
        corrected, _ = launch.attention(q, k, v, scale, out_dtype=q.dtype, sinks=heads_sinks, eta=eta, path=path,
                                        apply_rows=apply_rows)
        return corrected, mass, chosen
    corrected, tile_list = launch.correct(q, k, v, out, lse, heads_sinks, eta, path, apply_rows, scale, q.dtype,
                                           counters, may_repeat=sinks is not None)
    # Tiles holding a row whose correction would lose accuracy get the masked pass.
    launch.recompute_flagged(q, k, v, scale, heads_sinks, eta, path, apply_rows, tile_list, counters, corrected)
    # Written in float32 under the interpreter for bfloat16 (launch._stored); no copy otherwise.
    return corrected.to(q.dtype), mass, chosen


def _no_mass(q: Tensor) -> Tensor:
    return q.new_empty(0, dtype=torch.float32)


def _chosen_keys(q, sinks, uniform, top_k, select, control, score, window) -> Tensor:
    """The call's indices when no kernel picked them: explicit ones, none, the random
    control's top-1 without a mass pass, or the top_k by ``score`` (key mass, or the query
    rows' peaks for the query controls) in ``window``."""
    if sinks is not None:
        return sinks.clone()
    if top_k == 0:
        groups = q.shape[:2] if select == "head" else q.shape[:1]
        return torch.empty((*groups, 0), dtype=torch.int64, device=q.device)
    if uniform is not None:
        return uniform.argmin(dim=-1, keepdim=True) + window[0]
    return ranked(score, top_k, select, control, window)


def _short_keys(q, k, v, sinks, uniform, top_k, path, select, control, eta, mass_rows, candidates, apply_rows,
                scale, need_mass, intervene, selection):
    """Keys that fit one tile (launch.short_mass / short_attention): the mass from one pass,
    then the intervened attention from a second, exact without a correction; the top-1 per
    head is picked inside the second."""
    from . import launch

    if intervene and selection is not None and not selection.shared:
        partial, _ = launch.short_mass(q, k, v, scale, mass_rows)
        return launch.short_attention(q, k, v, scale, q.dtype, partial, eta=eta, path=path, apply_rows=apply_rows,
                                      selection=selection)
    out = partial = None
    mass = _no_mass(q)
    if need_mass:
        partial, out = launch.short_mass(q, k, v, scale, mass_rows, out_dtype=None if intervene else q.dtype)
        mass = partial[0] if partial.shape[0] == 1 else partial.sum(dim=0)
    chosen = _chosen_keys(q, sinks, uniform, top_k, select, control, mass, candidates)
    if not intervene:
        if out is None:
            out = launch.short_attention(q, k, v, scale, q.dtype, q)
        return out, mass, chosen
    out = launch.short_attention(q, k, v, scale, q.dtype, q if partial is None else partial,
                                 sinks=per_head(chosen, q.shape[1]), eta=eta, path=path, apply_rows=apply_rows)
    return out, mass, chosen


def _query_effect(out32: Tensor, v: Tensor, rows: Tensor, effect: str, eta: float, value_target: str,
                  dtype: torch.dtype) -> Tensor:
    """The query controls' intervention on the picked rows (B, H, t) of the unintervened
    output. "shift" is the original's: one constant added to every logit of a row, which
    the softmax takes away again, so the output is the plain one (sinkattn.reference
    applies the shift literally; the tests show the two agree). "ablate" replaces the rows
    by eta * O + (1 - eta) * target, target 0 or the head's mean value vector."""
    if effect == "shift":
        return out32.to(dtype)
    target = v.float().mean(dim=2, keepdim=True) if value_target == "mean" else torch.zeros_like(out32[:, :, :1])
    picked = torch.zeros(out32.shape[:3], dtype=torch.bool, device=out32.device)
    picked.scatter_(-1, rows, True)
    return torch.where(picked[..., None], eta * out32 + (1 - eta) * target, out32).to(dtype)


def _needs_blend(path: str, eta: float, eta_mode: str, value_target: str) -> bool:
    """The interventions that the correction kernel and masked pass do not apply directly:
    the prob rule, score and value together, and a mean or per-key value target (each with 0 < eta < 1,
    or eta = 0 for the mean target on the value path; at eta = 0 the prob rule and "both"
    are the score path, at eta = 1 every rule is plain attention)."""
    if eta == 1.0:
        return False
    on_scores = path in ("score", "both")
    on_values = path in ("value", "both")
    return ((on_values and value_target != "zero") or (eta > 0 and path == "both")
            or (eta > 0 and on_scores and eta_mode == "prob"))


def _blend(q, k, v, out32, lse, sinks, path, eta, eta_mode, value_target, vectors, apply_rows, scale, counters,
           may_repeat):
    """Every intervention from three exact pieces per row: O_rest, the attention over the keys
    that are not selected (the score path at eta 0, on the correction route with its masked
    fallback, so it stays exact when the selected keys hold nearly all the mass: no
    difference of two near-equal outputs is ever taken); P, the
    selected keys' unintervened mass; and R = sum_J p_j v_j (O(Nq * |J| * D)). With P' the
    selected keys' share after the score rule (P' = P without one),
        O' = (1 - P') O_rest + (P' / P) (eta_v R + (1 - eta_v) T),
    eta_v = eta on the value path (1 without it), T = sum_J p_j target_j: 0, P times the
    head's mean value, or p @ the per-key vectors (a repeated key's p is 0 after its first)."""
    from . import launch

    if may_repeat:
        unique, order = launch._without_duplicates(sinks, return_order=True)
        if vectors is not None:  # follow the keys into their sorted places
            vectors = vectors.gather(2, order[..., None].expand(-1, -1, -1, vectors.shape[-1]))
    else:
        unique = sinks.contiguous()
    valid = unique >= 0  # (B, H, t)
    index = unique.clamp_min(0)[..., None]
    k_sel = k.gather(2, index.expand(-1, -1, -1, k.shape[-1])).float()
    v_sel = v.gather(2, index.expand(-1, -1, -1, v.shape[-1])).float()
    log2_p = (q.float() @ k_sel.transpose(-1, -2)) * (scale * launch.LOG2E) - lse[..., None]  # (B, H, Nq, t)
    p = torch.where(valid[:, :, None, :], torch.exp2(log2_p), 0.0)
    p_sel = p.sum(-1, keepdim=True)  # P
    removed = p @ v_sel  # R
    if path == "value":
        ratio = torch.ones_like(p_sel)
    elif eta_mode == "logit":
        ratio = eta / (1 - (1 - eta) * p_sel)
    else:
        ratio = torch.full_like(p_sel, eta)
    eta_v = eta if path in ("value", "both") else 1.0
    if value_target == "vectors":
        target = p @ vectors.to(device=q.device, dtype=torch.float32)
    elif value_target == "mean":
        target = p_sel * v.float().mean(dim=2, keepdim=True)
    else:
        target = 0.0
    o_rest = _without_selected(q, k, v, out32, lse, unique, apply_rows, scale, counters)
    new = (1 - ratio * p_sel) * o_rest + ratio * (eta_v * removed + (1 - eta_v) * target)
    rows = torch.arange(q.shape[2], device=q.device)[:, None]
    applied = (rows >= apply_rows[0]) & (rows < apply_rows[1])
    return torch.where(applied, new, out32).to(q.dtype)


def _without_selected(q, k, v, out32, lse, sinks, apply_rows, scale, counters):
    """float32 attention over the keys not in ``sinks`` (-1 entries skipped), exact (the
    call's one correction: ``counters`` as the forward left them)."""
    from . import launch

    if current_settings().route == "masked":
        return launch.attention(q, k, v, scale, out_dtype=torch.float32, sinks=sinks, eta=0.0, path="score",
                                apply_rows=apply_rows)[0]
    o_rest, tile_list = launch.correct(q, k, v, out32, lse, sinks, 0.0, "score", apply_rows, scale,
                                        torch.float32, counters, may_repeat=False)
    launch.recompute_flagged(q, k, v, scale, sinks, 0.0, "score", apply_rows, tile_list, counters, o_rest)
    return o_rest


_sink_attention_op = torch.library.custom_op("sinkattn::sink_attention", mutates_args=())(_run_kernels)


@_sink_attention_op.register_fake
def _(q, k, v, sinks, uniform, top_k, path, select, control, eta, mass_rows, candidates, apply_rows, scale, want_mass,
      eta_mode, value_target, vectors):
    batch, heads, n_q, _ = q.shape
    need_mass = want_mass or (sinks is None and uniform is None and top_k > 0 and control_of(control).side == "keys")
    out = q.new_empty((batch, heads, n_q, v.shape[-1]))
    mass = q.new_empty(k.shape[:3] if need_mass else (0,), dtype=torch.float32)
    if sinks is not None:
        chosen = torch.empty_like(sinks)
    else:
        groups = (batch, heads) if select == "head" else (batch,)
        chosen = q.new_empty((*groups, top_k), dtype=torch.int64)
    return out, mass, chosen


def _setup_backward(ctx, inputs, output):
    q, k, v, _, _, _, path, _, _, eta, _, _, apply_rows, scale, _, eta_mode, value_target, vectors = inputs
    ctx.save_for_backward(q, k, v, output[2], vectors)
    ctx.intervention = dict(path=path, eta=eta, apply_queries=tuple(apply_rows), scale=scale, eta_mode=eta_mode,
                            value_target=value_target)
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_out, _grad_mass, _grad_sinks):
    """Gradients of ``out`` with the selected keys held fixed (a selection has no gradient),
    recomputed through the reference: exact, but it keeps a chunk_size x Nk probability
    block per query chunk for autograd, so it costs Nq x Nk memory (the forward never does)."""
    q, k, v, chosen, vectors = ctx.saved_tensors
    intervention = dict(ctx.intervention, value_target=vectors if vectors is not None else ctx.intervention["value_target"])
    inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3])]
    with torch.enable_grad():
        out = reference.sink_attention(*inputs, sinks=chosen, return_mass=False, **intervention).out
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out))
    return (*(next(grads) if t.requires_grad else None for t in inputs),) + (None,) * 15


_sink_attention_op.register_autograd(_backward, setup_context=_setup_backward)
