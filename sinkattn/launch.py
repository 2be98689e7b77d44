"""Host launchers of the Triton kernels: allocate outputs, pick the dot precision and the
config (from sinkattn.kernels.configs), launch. Inputs are already checked by
sinkattn.validation; strided views go to the kernels as they are (no copies), except under
the Triton interpreter, whose tl.dot cannot multiply bfloat16 (it multiplies the raw bit
patterns: triton issue 11584), so bfloat16 operands are handed over as float32 there, and
whose float32 -> bfloat16 conversion truncates where the GPU rounds to nearest even, so
bfloat16 outputs are written in float32 there and rounded by torch. bfloat16 numerics
proper are checked on the GPU.

Host work per call is kept small (issue 15): each launcher reads the settings once, the
per-shape launch parameters (grids, splits, configs) are cached by shape, and nothing here
synchronises with the device or builds a CPU tensor, so every launcher can be captured in a
CUDA graph. The kernels of one call count with one small int32 buffer (``counters``) that
the call's forward pass zeroes: no memset launch.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .kernels import configs
from .kernels.attention import flagged_tiles_kernel
from .kernels.correction import correction_kernel
from .kernels.query_stats import N_FIELDS, query_stats_kernel, query_stats_merge_kernel
from .kernels.short_keys import short_attention_kernel, short_mass_kernel
from .kernels.trace_stats import mass_stats_kernel
from .settings import Settings, current

LOG2E = 1.0 / math.log(2.0)
MAX_HEAD_DIM = 256
# How far a corrected row's error bound (the forward rounded p_j before its P V product:
# kernels/correction.py) may exceed the rounding of the row's own output before the row is
# recomputed by the masked pass. fp32 with IEEE dots rounds p at 2^-24 against the 1e-6
# aimed for.
# Half precision: at most twice the output's own rounding, in the worst case of the bound.
_MAX_AMPLIFICATION = {torch.float16: 2.0, torch.bfloat16: 2.0, torch.float32: 16.0}


class Selection(NamedTuple):
    """The top-1 selection a kernel makes for the call: per head, or per batch (``shared``)
    by the head-mean mass, the largest or smallest candidate in ``candidates``; by the mass,
    or by ``rank`` (groups, stop - start) float32 when given (uniform draws: the smallest)."""

    shared: bool
    candidates: tuple[int, int]
    largest: bool
    rank: Tensor | None = None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1). Plain Python: triton.cdiv and
    triton.next_power_of_2 are constexpr functions, ~4 us of host time per call from Python."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _output(shape, dtype: torch.dtype, device) -> Tensor:
    """Every buffer a launcher hands to a kernel comes from here (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def row_buffer(q: Tensor) -> Tensor:
    """A (B, H, Nq) float32 buffer for a per-row output of the forward (``row_peak``)."""
    return _output(q.shape[:3], torch.float32, q.device)


def _dot_precision(dtype: torch.dtype, settings: Settings) -> str:
    """Full-precision dots for float32 inputs unless the settings allow TF32."""
    if dtype == torch.float32 and not settings.allow_tf32:
        return "ieee"
    return "tf32"


def _operand(t: Tensor, settings: Settings) -> Tensor:
    if t.dtype == torch.bfloat16 and settings.interpret:
        return t.float()
    return t


def _stored(dtype: torch.dtype, settings: Settings | None = None) -> torch.dtype:
    """The dtype a kernel writes an output of ``dtype`` in: float32 for bfloat16 under the
    interpreter (its conversion truncates), ``dtype`` itself everywhere else."""
    settings = settings or current()
    return torch.float32 if dtype == torch.bfloat16 and settings.interpret else dtype


def _launch(name: str, settings: Settings, grid, *args, **kwargs):
    """Launch a tuned kernel ("attention_forward", "key_mass") with the config the settings
    give it: a forced one (``settings.kernel_configs``), the interpreter's, or the autotuner's.
    The autotuner runs the first time per tuning key; after that its choice is launched
    directly, because Triton's Autotuner.run rebuilds its key from every argument on every
    call, ~15 us of host time per launch on the H200 machine's host (probe6). The key is the
    autotuner's: the tuning-key values and the dtype of every tensor argument."""
    forced = settings.kernel_configs.get(name) or (configs.INTERPRETER_CONFIGS[name] if settings.interpret else None)
    tuner = configs.tuner(name, settings.autotune)
    if forced is not None:
        return tuner.fn[_grid(grid, forced)](*args, **kwargs, **forced)
    # tuner.fn is the @triton.jit function itself (no heuristics wrapper: the launchers pass
    # every flag), launched with the tuner's choice after the first call.
    chosen = _chosen.setdefault((name, settings.autotune), {})
    call_key = (*(kwargs[k] for k in configs.TUNING_KEYS[name]), *(getattr(a, "dtype", None) for a in args))
    config = chosen.get(call_key)
    if config is None:
        result = tuner[grid](*args, **kwargs)
        chosen[call_key] = tuner.best_config.all_kwargs()
        return result
    return tuner.fn[_grid(grid, config)](*args, **kwargs, **config)


_chosen: dict = {}


def _grid(grid, config):
    return grid(config) if callable(grid) else grid


def _fixed(name: str, kernel, settings: Settings, grid, *args, **kwargs):
    """Launch an untuned kernel with its default config, or the one the settings force."""
    return kernel[grid](*args, **{**kwargs, **settings.kernel_configs.get(name, {})})


def padded_head_dims(dim: int, dim_v: int) -> tuple[int, int]:
    """The head dims the kernels run at: each rounded up to a power of two (at least 16), the
    blocks' width. The op zero-pads q, k and v to them (one copy per call): a head dim that
    is not a block width made every K and V load a masked load of a short row, 2.2x slower
    at PixArt-Sigma's 72 than padding first (probe17_d72, H200: 1.507 against 0.690 ms)."""
    return max(16, _pow2(dim)), max(16, _pow2(dim_v))


@functools.lru_cache(maxsize=None)
def _head_dims(dim: int, dim_v: int) -> dict:
    if max(dim, dim_v) > MAX_HEAD_DIM:
        raise ValueError(f"head dim {max(dim, dim_v)} is not supported by the kernels (max {MAX_HEAD_DIM})")
    block_d, block_dv = padded_head_dims(dim, dim_v)
    return {"D": dim, "DV": dim_v, "BLOCK_D": block_d, "BLOCK_DV": block_dv}


def _strides(q: Tensor, k: Tensor, v: Tensor, out: Tensor) -> tuple[int, ...]:
    return (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])


def _masked_pass_flags(q: Tensor, top_k: int, path: str, scale: float, settings: Settings) -> dict:
    return dict(BLOCK_T=max(16, _pow2(top_k)), WEIGHT_ON_VALUE=path == "value",
                FOLD_SCALE=scale > 0, DOT_PRECISION=_dot_precision(q.dtype, settings))


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _multiprocessors_of(t: Tensor) -> int:
    # Under the interpreter, pretend to have 4 (so the CPU tests cut shares and stride tiles).
    return 4 if t.device.type != "cuda" else _multiprocessors(t.device.index or 0)


# -- the call's counters ---------------------------------------------------------------------

class CounterLayout(NamedTuple):
    """Where each count lives in the call's int32 counters: the correction's slot count at 0,
    one arrival count per split slot of the flagged pass after it, then the key-mass pass's
    arrivals per head (B*H) and per batch (B)."""

    arrivals_at: int
    size: int


@functools.lru_cache(maxsize=256)
def counter_layout(batch: int, heads: int, settings: Settings) -> CounterLayout:
    arrivals_at = 1 + settings.flagged_max_split_tiles
    return CounterLayout(arrivals_at, arrivals_at + batch * heads + batch)


def counters(q: Tensor, settings: Settings | None = None) -> Tensor:
    """The call's counters, uninitialised: the call's first ``attention`` zeroes them."""
    settings = settings or current()
    return _output((counter_layout(q.shape[0], q.shape[1], settings).size,), torch.int32, q.device)


# -- the passes ------------------------------------------------------------------------------

def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, out_dtype: torch.dtype,
              sinks: Tensor | None = None, eta: float = 0.0, path: str = "score",
              apply_rows: tuple[int, int] | None = None, row_peak: Tensor | None = None,
              counters: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """O (B, H, Nq, Dv) in ``out_dtype`` and lse2 (B, H, Nq) float32, the row log-sum-exp in
    log2 units of the scaled scores. With ``sinks`` (B, H, t) int64 the intervention on those
    keys (weight ``eta`` on the ``path``, "score" or "value") is applied inside the pass (the
    masked route). ``row_peak`` (B, H, Nq) float32, if given, receives each row's largest
    probability (plain pass only). ``counters`` (from :func:`counters`) are zeroed."""
    batch, n_heads, n_q, _ = q.shape
    n_k = k.shape[2]
    dims = _head_dims(q.shape[-1], v.shape[-1])
    settings = current()
    stored = _stored(out_dtype, settings)
    out = _output((batch, n_heads, n_q, v.shape[-1]), stored, q.device)
    lse = _output((batch, n_heads, n_q), torch.float32, q.device)
    apply_start, apply_stop = apply_rows if apply_rows is not None else (0, n_q)
    if sinks is not None:
        sinks = sinks.contiguous()
    if sinks is None and row_peak is None and hopper_forward_fits(q, k, v, scale, settings):
        _hopper_attention(q, k, v, scale, out, lse, counters, settings)
    else:
        qo, ko, vo = _operand(q, settings), _operand(k, settings), _operand(v, settings)
        top_k = 0 if sinks is None else sinks.shape[-1]
        _launch(
            "attention_forward", settings, lambda meta: (_cdiv(n_q, meta["BLOCK_M"]), batch * n_heads),
            qo, ko, vo, out, lse, sinks, row_peak, counters, 0 if counters is None else counters.shape[0],
            *_strides(qo, ko, vo, out),
            n_heads, n_q, n_k, apply_start, apply_stop, scale * LOG2E, top_k, eta,
            HAS_SINKS=sinks is not None, HAS_ROW_PEAK=row_peak is not None, HAS_COUNTERS=counters is not None,
            **_masked_pass_flags(q, top_k, path, scale, settings), **dims)
    return (out if stored == out_dtype else out.to(out_dtype)), lse


# -- the warp-specialised forward on Hopper -----------------------------------------------------

@functools.lru_cache(maxsize=None)
def _hopper_kernels(device_index: int):
    """kernels.attention_hopper on an sm_90 device whose Triton has Gluon's Hopper API, else None."""
    if torch.cuda.get_device_capability(device_index) != (9, 0):
        return None
    try:
        from .kernels import attention_hopper
    except ImportError:  # a Triton without Gluon's Hopper modules
        return None
    return attention_hopper


@functools.lru_cache(maxsize=1024)
def _tma_layout(shape: tuple, stride: tuple) -> bool:
    """Whether a (B, H, N, D) operand can be read through one 2-D TMA descriptor over rows
    of stride ``stride[2]`` such that a key tile past a head's last row reads only the same
    tensor's following rows or TMA's zero fill: diffusers' (B, N, H*D) view (heads side by
    side in a row, batches stacked) or a contiguous (B, H, N, D) (heads stacked). Rows must
    be 16-byte multiples (2-byte elements)."""
    batch, heads, n, dim = shape
    s_b, s_h, s_m, s_d = stride
    if s_d != 1 or s_m % 8 or s_m < dim:
        return False
    heads_in_a_row = (heads == 1 or s_h >= dim) and (heads - 1) * s_h + dim <= s_m and (batch == 1 or s_b == n * s_m)
    heads_stacked = (heads == 1 or s_h == n * s_m) and (batch == 1 or s_b == heads * n * s_m)
    return heads_in_a_row or heads_stacked


def hopper_forward_fits(q: Tensor, k: Tensor, v: Tensor, scale: float, settings: Settings) -> bool:
    """Whether the plain forward of this call runs the Gluon kernel (kernels/attention_hopper.py):
    on an sm_90 GPU with the setting on, float16 or bfloat16 operands, one head dim for q, k
    and v among those it is faster at (``attention_hopper.CONFIGS``: 128, also the width
    PixArt-Sigma's 72 is padded to), a positive scale (folded into the exponentials), fewer
    than 2**31 query elements (the kernel offsets O and LSE in int32; Q's numel is O's), and
    operands in a layout one TMA descriptor reads (``_tma_layout``), 16-byte aligned."""
    if not settings.hopper_forward or settings.interpret or q.device.type != "cuda":
        return False
    hopper = _hopper_kernels(q.device.index or 0)
    dim = q.shape[-1]
    return (hopper is not None and dim in hopper.CONFIGS and k.shape[-1] == dim and v.shape[-1] == dim
            and scale > 0 and q.dtype in (torch.float16, torch.bfloat16) and k.dtype == q.dtype
            and v.dtype == q.dtype and q.shape[2] > 0 and k.shape[2] > 0 and q.numel() < 2 ** 31
            and all(t.data_ptr() % 16 == 0 and _tma_layout(tuple(t.shape), t.stride()) for t in (q, k, v)))


@functools.lru_cache(maxsize=None)
def _tma_shared_layout(block_rows: int, dim: int, dtype: torch.dtype):
    from triton.experimental.gluon import language as gl
    element = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout.get_default_for([block_rows, dim], element)


def _tma_descriptor(t: Tensor, block_rows: int):
    """A 2-D TMA descriptor over t's storage (B, H, N, D, ``_tma_layout``): rows of stride
    t.stride(2) from t's first element to its last head's last row, blocks of block_rows x D."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    batch, heads, n, dim = t.shape
    s_b, s_h, s_m, _ = t.stride()
    rows = ((batch - 1) * s_b + (heads - 1) * s_h) // s_m + n
    return TensorDescriptor(t, [rows, s_m], [s_m, 1], [block_rows, dim], _tma_shared_layout(block_rows, dim, t.dtype))


def _hopper_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, out: Tensor, lse: Tensor,
                      counters: Tensor | None, settings: Settings) -> None:
    """The plain forward by the Gluon kernel into ``out`` and ``lse`` (``attention``'s), with
    the head dim's config or the one the settings force (BLOCK_N and STAGES, and PINGPONG,
    on by default; a forced config also runs a head dim CONFIGS does not list: probes)."""
    hopper = _hopper_kernels(q.device.index or 0)
    batch, heads, n_q, dim = q.shape
    config = {"PINGPONG": True, **(settings.kernel_configs.get("hopper_forward") or hopper.CONFIGS[dim])}
    block_m = hopper.BLOCK_M
    hopper.hopper_attention_kernel[(_cdiv(n_q, 2 * block_m), batch * heads)](
        _tma_descriptor(q, block_m), _tma_descriptor(k, config["BLOCK_N"]), _tma_descriptor(v, config["BLOCK_N"]),
        out, lse, counters, 0 if counters is None else counters.shape[0], *_strides(q, k, v, out),
        heads, n_q, k.shape[2], scale * LOG2E,
        BLOCK_M=block_m, D=dim, HAS_COUNTERS=counters is not None, CONSUMER_REGS=hopper.CONSUMER_REGS,
        PRODUCER_REGS=hopper.PRODUCER_REGS, num_warps=4, maxnreg=hopper.MAXNREG, **config)


@functools.lru_cache(maxsize=256)
def _mass_shares(batch: int, heads: int, n_k: int, n_rows: int, processors: int) -> int:
    key_programs = _cdiv(n_k, 128) * batch * heads
    return max(1, min(_cdiv(8 * processors, key_programs), n_rows // (4 * 64)))


def mass_shares(q: Tensor, n_k: int, n_rows: int) -> int:
    """How many shares the key-mass pass cuts the mass queries into: enough programs for
    about 8 per multiprocessor when the keys alone give fewer (77 text keys: 20 programs
    for SDXL's cross-attention), with at least 4 query tiles of 64 per share. The partial
    sums cost shares x (B, H, Nk) floats."""
    return _mass_shares(q.shape[0], q.shape[1], n_k, n_rows, _multiprocessors_of(q))


def key_mass(q: Tensor, k: Tensor, lse: Tensor, scale: float, rows: tuple[int, int],
             counters: Tensor | None = None, selection: Selection | None = None):
    """m (B, H, Nk) float32: the mean over query rows [rows) of the attention probabilities.
    With a ``selection``, also the selected keys (B, H, 1) int64 (the same key in every head
    for a shared one): returns (m, keys). ``counters`` come from the call's forward pass
    (zeroed); without them a zeroed buffer is made here."""
    batch, n_heads, n_q, _ = q.shape
    n_k = k.shape[2]
    dims = _head_dims(q.shape[-1], q.shape[-1])
    settings = current()
    shares = mass_shares(q, n_k, rows[1] - rows[0])
    mass = _output((batch, n_heads, n_k), torch.float32, q.device)
    partial = _output((shares, batch, n_heads, n_k), torch.float32, q.device) if shares > 1 else mass
    layout = counter_layout(batch, n_heads, settings)
    if counters is None:  # a standalone call (benchmarks, probes): zeroed only if they count
        counted = shares > 1 or selection is not None
        counters = (torch.zeros if counted else torch.empty)(layout.size, dtype=torch.int32, device=q.device)
    sinks = _output((batch, n_heads, 1), torch.int64, q.device) if selection is not None else None
    start, stop = selection.candidates if selection is not None else (0, n_k)
    qo, ko = _operand(q, settings), _operand(k, settings)
    _launch(
        "key_mass", settings, lambda meta: (_cdiv(n_k, meta["BLOCK_N"]), batch * n_heads, shares),
        qo, ko, lse, mass, partial, counters[layout.arrivals_at:],
        None if selection is None else selection.rank, sinks,
        *qo.stride()[:3], *ko.stride()[:3],
        n_heads, n_q, n_k, rows[0], rows[1], scale * LOG2E, 1.0 / (rows[1] - rows[0]), start, stop,
        D=dims["D"], BLOCK_D=dims["BLOCK_D"], DOT_PRECISION=_dot_precision(q.dtype, settings),
        MANY_SHARES=shares > 1, SHARED=selection is not None and selection.shared,
        HAS_SELECTION=selection is not None, RANK_IS_MASS=selection is None or selection.rank is None,
        LARGEST=selection is None or selection.largest,
    )
    return mass if selection is None else (mass, sinks)


def _without_duplicates(sinks: Tensor, return_order: bool = False):
    """(B, H, t) int64, contiguous, sorted, with repeated indices of a row replaced by -1 (an
    intervened set counts each key once; the first listed is the one kept). With
    ``return_order``, also the (B, H, t) positions in ``sinks`` of the sorted entries."""
    ordered, order = sinks.sort(dim=-1, stable=True)
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    unique = ordered.masked_fill(repeated, -1).contiguous()
    return (unique, order) if return_order else unique


def correct(q: Tensor, k: Tensor, v: Tensor, out32: Tensor, lse: Tensor, sinks: Tensor, eta: float,
            path: str, apply_rows: tuple[int, int], scale: float, out_dtype: torch.dtype,
            counters: Tensor, may_repeat: bool = True) -> tuple[Tensor, Tensor]:
    """The intervened output from the unintervened float32 one and the selected keys
    (B, H, t), in ``_stored(out_dtype)`` (``recompute_flagged`` still writes into it; the
    caller rounds it to ``out_dtype``), and the list (B*H*tiles,) int32 of the query tiles
    holding a row whose correction would lose accuracy (tile numbers bh * tiles + tile, of
    cdiv(Nq, block) tiles per head; the first ``counters[0]`` entries are set, the count the
    correction adds to the counters that the call's forward zeroed): the input of
    ``recompute_flagged``. ``may_repeat=False`` promises distinct indices per row (selection
    gives those)."""
    batch, n_heads, n_q, _ = q.shape
    dims = _head_dims(q.shape[-1], v.shape[-1])
    settings = current()
    block_m = configs.correction_block_m(settings.interpret)
    out = _output((batch, n_heads, n_q, v.shape[-1]), _stored(out_dtype, settings), q.device)
    n_tiles = _cdiv(n_q, block_m)
    tile_list = _output((batch * n_heads * n_tiles,), torch.int32, q.device)
    unique = _without_duplicates(sinks) if may_repeat else sinks.contiguous()
    _fixed(
        "correction", correction_kernel, settings, (n_tiles, batch * n_heads),
        q, k, v, out32, lse, unique, out, tile_list, counters,
        *_strides(q, k, v, out32), out.stride(0), out.stride(1), out.stride(2),
        n_heads, n_q, unique.shape[-1], apply_rows[0], apply_rows[1], scale * LOG2E,
        1.0 - eta, _MAX_AMPLIFICATION[q.dtype], SCORE_PATH=path == "score", BLOCK_M=block_m, num_warps=4, **dims,
    )
    return out, tile_list


class _FlaggedPlan(NamedTuple):
    config: dict
    splits: int
    max_split_tiles: int
    programs: int  # along the list (the grid's first dimension)


@functools.lru_cache(maxsize=256)
def _flagged_plan(batch: int, heads: int, n_q: int, n_k: int, dim: int, dim_v: int, size: int,
                  processors: int, shared_memory: int, settings: Settings) -> _FlaggedPlan:
    dims = _head_dims(dim, dim_v)
    config = settings.kernel_configs.get("flagged_tiles") or configs.flagged_config(
        n_q, n_k, dims["BLOCK_D"], dims["BLOCK_DV"], size, shared_memory, settings.interpret)
    block_m = config["BLOCK_M"]  # the correction kernel's tiles, which the list numbers
    key_tiles = _cdiv(n_k, config["BLOCK_N"])
    # Up to flagged_key_splits ranges of whole key tiles, none of them empty.
    splits = _cdiv(key_tiles, _cdiv(key_tiles, settings.flagged_key_splits))
    # The partials never take more memory than the output does.
    max_split_tiles = min(settings.flagged_max_split_tiles, batch * heads * n_q // (splits * block_m))
    # One program per split slot; when more tiles are flagged, the programs stride over them.
    programs = max(max_split_tiles, _cdiv(settings.flagged_programs_per_sm * processors, splits), 1)
    return _FlaggedPlan(config, splits, max_split_tiles, programs)


def recompute_flagged(q: Tensor, k: Tensor, v: Tensor, scale: float, sinks: Tensor, eta: float, path: str,
                      apply_rows: tuple[int, int], tile_list: Tensor, counters: Tensor, out: Tensor) -> None:
    """The masked pass for the query tiles that ``correct`` listed, into ``out``; the keys of
    each tile are split over programs when few tiles are flagged, and each tile's ranges
    merged by the last of them to finish (one launch)."""
    batch, n_heads, n_q, _ = q.shape
    n_k = k.shape[2]
    dims = _head_dims(q.shape[-1], v.shape[-1])
    settings = current()
    plan = _flagged_plan(batch, n_heads, n_q, n_k, q.shape[-1], v.shape[-1], q.element_size(), _multiprocessors_of(q),
                         0 if settings.interpret else configs.shared_memory_of(q), settings)
    block_m = plan.config["BLOCK_M"]
    part_o = _output((plan.max_split_tiles, plan.splits, block_m, v.shape[-1]), torch.float32, q.device)
    part_lse = _output((plan.max_split_tiles, plan.splits, block_m), torch.float32, q.device)
    qo, ko, vo = _operand(q, settings), _operand(k, settings), _operand(v, settings)
    sinks = sinks.contiguous()
    flagged_tiles_kernel[(plan.programs, plan.splits)](
        qo, ko, vo, out, sinks, tile_list, counters, part_o, part_lse, *_strides(qo, ko, vo, out),
        n_heads, n_q, n_k, apply_rows[0], apply_rows[1], scale * LOG2E, sinks.shape[-1], eta, plan.splits,
        plan.max_split_tiles, **_masked_pass_flags(q, sinks.shape[-1], path, scale, settings), **dims, **plan.config)


# -- the short-key path ----------------------------------------------------------------------

# Bytes of key and value tiles (BLOCK_N x (BLOCK_D + BLOCK_DV) x element size) the short-key
# path takes, by element size. Shared memory holds them beside the query and score tiles; what
# short_attention_kernel then asks for, compiled for sm_90 (triton 3.6, an H200 block gets at
# most 232448 bytes): 16-bit operands 65536-114688 bytes at 96 KiB of tiles; float32 operands
# (full-precision dots) 2.4x their tile bytes: 155776-180480 at 64 KiB, 229504-262400 at 96 KiB,
# which failed at launch (OutOfResources). tests/test_kernels_compile.py compiles the largest
# configuration each budget admits.
ONE_TILE_BYTES = {2: 96 * 1024, 4: 64 * 1024}


@functools.lru_cache(maxsize=256)
def _fits_one_tile(n_k: int, dim: int, dim_v: int, element_size: int, short_keys: int) -> bool:
    dims = _head_dims(dim, dim_v)
    tile_bytes = max(16, _pow2(n_k)) * (dims["BLOCK_D"] + dims["BLOCK_DV"]) * element_size
    return n_k <= short_keys and tile_bytes <= ONE_TILE_BYTES.get(element_size, 0)


def fits_one_tile(q: Tensor, k: Tensor, v: Tensor, settings: Settings) -> bool:
    """The short-key path takes the call: at most ``settings.short_keys`` keys, and their key
    and value tiles within ``ONE_TILE_BYTES`` (77 keys at D 64 in bfloat16 take 32 KiB; 256
    keys at D 128 would take 128 KiB and go to the tiled kernels)."""
    return _fits_one_tile(k.shape[2], q.shape[-1], v.shape[-1], q.element_size(), settings.short_keys)


@functools.lru_cache(maxsize=256)
def short_config(n_k: int, dim: int, dim_v: int, settings: Settings) -> dict:
    """BLOCK_N holds every key; BLOCK_M shrinks as the key tile grows (the [BM, BN] scores
    and the [BN, D] key and value tiles live in registers)."""
    block_n = max(16, _pow2(n_k))
    if settings.interpret:
        block_m = 32
    else:
        block_m = 64 if block_n * max(dim, dim_v) <= 128 * 128 else 32
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": 4, **settings.kernel_configs.get("short_keys", {})}


def short_mass(q: Tensor, k: Tensor, v: Tensor, scale: float, rows: tuple[int, int],
               out_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor | None]:
    """Short keys (Nk <= 256): the key mass's partial sums per query tile (tiles, B, H, Nk)
    float32 (their sum over tiles is the mass) and, with ``out_dtype``, the plain output."""
    batch, n_heads, n_q, _ = q.shape
    n_k = k.shape[2]
    dims = _head_dims(q.shape[-1], v.shape[-1])
    settings = current()
    config = short_config(n_k, q.shape[-1], v.shape[-1], settings)
    n_tiles = _cdiv(n_q, config["BLOCK_M"])
    partial = _output((n_tiles, batch, n_heads, n_k), torch.float32, q.device)
    out = None
    if out_dtype is not None:
        out = _output((batch, n_heads, n_q, v.shape[-1]), _stored(out_dtype, settings), q.device)
    qo, ko, vo = _operand(q, settings), _operand(k, settings), _operand(v, settings)
    target = out if out is not None else qo
    short_mass_kernel[(n_tiles, batch * n_heads)](
        qo, ko, vo, out, partial, *_strides(qo, ko, vo, target),
        n_heads, n_q, n_k, rows[0], rows[1], scale * LOG2E, 1.0 / (rows[1] - rows[0]),
        DOT_PRECISION=_dot_precision(q.dtype, settings), HAS_OUT=out is not None, **dims, **config)
    if out is not None and out.dtype != out_dtype:
        out = out.to(out_dtype)
    return partial, out


def short_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, out_dtype: torch.dtype, partial: Tensor,
                    sinks: Tensor | None = None, eta: float = 0.0, path: str = "score",
                    apply_rows: tuple[int, int] | None = None, selection: Selection | None = None):
    """Short keys: the output with the intervention on ``sinks`` (B, H, t) int64, or with a
    ``selection`` made here from the mass in ``partial`` (per head only); then returns
    (out, mass (B, H, Nk), keys (B, H, 1)). Without either, plain attention."""
    batch, n_heads, n_q, _ = q.shape
    n_k = k.shape[2]
    dims = _head_dims(q.shape[-1], v.shape[-1])
    settings = current()
    config = short_config(n_k, q.shape[-1], v.shape[-1], settings)
    stored = _stored(out_dtype, settings)
    out = _output((batch, n_heads, n_q, v.shape[-1]), stored, q.device)
    mass = keys = None
    if selection is not None:
        mass = _output((batch, n_heads, n_k), torch.float32, q.device)
        keys = _output((batch, n_heads, 1), torch.int64, q.device)
    elif sinks is not None:
        keys = sinks.contiguous()
    start, stop = selection.candidates if selection is not None else (0, n_k)
    apply_start, apply_stop = apply_rows if apply_rows is not None else (0, n_q)
    top_k = 1 if selection is not None else (0 if sinks is None else sinks.shape[-1])
    qo, ko, vo = _operand(q, settings), _operand(k, settings), _operand(v, settings)
    short_attention_kernel[(_cdiv(n_q, config["BLOCK_M"]), batch * n_heads)](
        qo, ko, vo, out, partial, mass, None if selection is None else selection.rank, keys,
        *_strides(qo, ko, vo, out),
        n_heads, n_q, n_k, apply_start, apply_stop, scale * LOG2E, top_k, eta, partial.shape[0], start, stop,
        SELECT=selection is not None, HAS_SINKS=selection is None and sinks is not None,
        RANK_IS_MASS=selection is None or selection.rank is None, LARGEST=selection is None or selection.largest,
        **_masked_pass_flags(q, top_k, path, scale, settings), **dims, **config)
    if stored != out_dtype:
        out = out.to(out_dtype)
    return out if selection is None else (out, mass, keys)


# Key ranges of 1024 and row tiles of 64: 32.6 us per SD3-medium call on the H200, against
# 50.5 us for 512 and 16, 59.4 us for one range (probe20, with the merge).
QUERY_STATS_KEYS_PER_SPLIT, QUERY_STATS_BLOCK_M = 1024, 64


def query_stats(q: Tensor, k: Tensor, rows: Tensor, scale: float, means_into: Tensor | None = None,
                keys_per_split: int = QUERY_STATS_KEYS_PER_SPLIT,
                block_m: int = QUERY_STATS_BLOCK_M) -> tuple[Tensor, Tensor] | None:
    """The top-5 probability sum and the entropy (nats) of the query rows ``rows`` (int64,
    (n,)) of every (b, h): two (B, H, n) float32 tensors, from kernels.query_stats (one pass
    over the keys, split into ranges of ``keys_per_split`` keys (rounded up to the key tile),
    then one merge launch). With ``means_into`` (a (B, H, 2) float32 view, last dimension
    contiguous: the tracer's two query columns) the merge writes there instead their means
    over the rows per head; returns None."""
    batch, n_heads, _, dim = q.shape
    n, n_k = rows.numel(), k.shape[2]
    settings = current()
    block_n = 64
    keys_per_split = _cdiv(max(1, min(keys_per_split, n_k)), block_n) * block_n
    splits = _cdiv(n_k, keys_per_split)
    part = _output((splits, N_FIELDS.value, batch * n_heads, n), torch.float32, q.device)
    qo, ko = _operand(q, settings), _operand(k, settings)
    query_stats_kernel[(_cdiv(n, block_m), batch * n_heads, splits)](
        qo, ko, rows, part, *qo.stride()[:3], *ko.stride()[:3],
        n_heads, n, n_k, keys_per_split, scale * LOG2E,
        D=dim, BLOCK_D=padded_head_dims(dim, dim)[0], BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_PRECISION=_dot_precision(q.dtype, settings))
    out = None
    if means_into is None:
        out = _output((2, batch, n_heads, n), torch.float32, q.device)
    else:
        assert means_into.shape == (batch, n_heads, 2) and means_into.stride(-1) == 1, "a (B, H, 2) view"
    query_stats_merge_kernel[(batch * n_heads,)](
        part, out, means_into, n_heads, n, splits, *(means_into.stride()[:2] if out is None else (0, 0)),
        BLOCK_S=_pow2(splits), BLOCK_C=_pow2(5 * splits), BLOCK_R=_pow2(n))
    return None if out is None else (out[0], out[1])


def trace_mass_stats(mass: Tensor, sinks: Tensor | None, text: tuple[int, int], image: tuple[int, int],
                     n_top: int, fixed: int, out: Tensor, query: str) -> None:
    """The tracer's row per (batch row, head) and per batch row's head mean from the key mass
    (B, H, Nk), written into ``out`` (B, H + 1, fixed + 2 n_top + 2 n_sel) float32, columns
    contiguous, by kernels.trace_stats (one launch, after one torch mean for the head-mean
    mass); ``sinks`` (B, H, n_sel) or (B, n_sel) the selected keys, or None. ``query``: what
    the two query columns (5, 6) get: "nan" (no sampled queries), or "head_mean" (the heads'
    rows hold them already: their mean into the head-mean row)."""
    batch, n_heads, n_k = mass.shape
    mass = mass.float()
    if mass.stride(-1) != 1:
        mass = mass.contiguous()
    head_mean = mass.mean(1)  # (B, Nk)
    n_sel = 0 if sinks is None else sinks.shape[-1]
    assert out.shape == (batch, n_heads + 1, fixed + 2 * n_top + 2 * n_sel) and out.stride(-1) == 1
    assert query in ("nan", "head_mean"), query
    stride_sb = stride_sh = 0
    if sinks is not None:
        sinks = sinks.contiguous()
        stride_sb, stride_sh = (sinks.stride(0), sinks.stride(1)) if sinks.dim() == 3 else (sinks.stride(0), 0)
    mass_stats_kernel[(batch, n_heads + 1)](
        mass, head_mean, sinks, out, mass.stride(0), mass.stride(1), head_mean.stride(0), stride_sb, stride_sh,
        out.stride(0), out.stride(1), n_heads, n_k, *text, *image,
        FIXED=fixed, N_TOP=n_top, BLOCK_T=_pow2(max(n_top, 2)), N_SEL=n_sel, BLOCK_S=_pow2(max(n_sel, 2)),
        QUERY_MEAN=query == "head_mean", BLOCK_H=_pow2(n_heads), BLOCK_N=min(1024, max(16, _pow2(n_k))))
