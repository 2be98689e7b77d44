"""The short-key path: every key of a head in one tile (Nk up to 256: SDXL's 77-token
cross-attention, text-only candidates), so each program holds its query rows' whole score
rows and their statistics are exact, without an online softmax or a saved LSE.

Two launches do what the long-sequence pipeline does in four:

1. ``short_mass_kernel``: per (query tile, head), the probabilities P = softmax(S) of the
   tile's rows and their column sums over the mass queries, one partial per tile
   (PARTIAL (tiles, B*H, Nk) float32, each already divided by the number of mass queries);
   with OUT, also the plain output P V (the mass-only call of a tracer).
2. ``short_attention_kernel``: per (query tile, head), the intervened attention of the tile
   (the masked pass: the selected keys' logits shifted by log2(eta), or their probabilities
   scaled on the value path), exact because the whole row is in the tile. For the default
   top-1 selection every program first adds the head's partials in tile order (the same sum,
   bit for bit, in every program: no atomics, no second reduction launch) and picks the key;
   the first program of the head writes the mass row and the key.

On an H200 the whole SDXL cross-attention call (B2 H10 Nq4096 Nk77) is about 2 x 4096 x 10
x 2 query-tile programs of a few microseconds: the pipeline's four launches took 0.47 ms
there against 0.019 ms for cuDNN (kernels/NOTES.md, issue 15).
"""

import triton
import triton.language as tl

from .attention import _attend_rows, _head_sinks, _store_rows
from .selection import best_of_row, keep_best, ranked_values


@triton.jit(do_not_specialize=["N_Q", "N_K", "M_START", "M_STOP"])
def short_mass_kernel(
    Q, K, V, OUT, PARTIAL,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_OUT: tl.constexpr,
):
    """PARTIAL[pid_m, bh] = sum over the tile's mass queries of P / (M_STOP - M_START); OUT
    (plain attention) when given. BLOCK_N >= N_K."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    mask_m = offs_m < N_Q
    mask_n = offs_n < N_K
    b_q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                  mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)  # [BM, BD]
    b_k = tl.load(K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                  mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)  # [BN, BD]
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale  # [BM, BN], log2 units
    b_s = tl.where(mask_n[None, :], b_s, float("-inf"))
    m_i = tl.max(b_s, 1)  # [BM]
    b_p = tl.math.exp2(b_s - m_i[:, None])  # [BM, BN]
    l_i = tl.sum(b_p, 1)  # [BM]
    in_mass = mask_m & (offs_m >= M_START) & (offs_m < M_STOP)  # [BM]
    column = tl.sum(tl.where(in_mass[:, None], b_p / l_i[:, None], 0.0), 0) * inv_count  # [BN]
    tl.store(PARTIAL + (pid_m * tl.num_programs(1) + bh) * N_K + offs_n, column, mask=mask_n)
    if HAS_OUT:
        offs_dv = tl.arange(0, BLOCK_DV)  # [BDV]
        b_v = tl.load(V + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_dv[None, :],
                      mask=mask_n[:, None] & (offs_dv[None, :] < DV), other=0.0)  # [BN, BDV]
        acc = tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)  # [BM, BDV]
        _store_rows(OUT + b * stride_ob + h * stride_oh, offs_m, mask_m, stride_om, acc, l_i, DV, BLOCK_DV)


@triton.jit
def _head_mass(PARTIAL, bh, n_bh, N_K, N_TILES, BLOCK_N: tl.constexpr, BLOCK_TILES: tl.constexpr):
    """The head's mass row [BN]: its tiles' partials added in tile order."""
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    total = tl.zeros([BLOCK_N], tl.float32)
    for start in range(0, N_TILES, BLOCK_TILES):
        offs_t = start + tl.arange(0, BLOCK_TILES)  # [BT]
        block = tl.load(PARTIAL + (offs_t[:, None] * n_bh + bh) * N_K + offs_n[None, :],
                        mask=(offs_t[:, None] < N_TILES) & (offs_n[None, :] < N_K), other=0.0)  # [BT, BN]
        total += tl.sum(block, 0)
    return total


@triton.jit(do_not_specialize=["N_Q", "N_K", "APPLY_START", "APPLY_STOP", "TOP_K", "N_TILES", "C_START", "C_STOP"])
def short_attention_kernel(
    Q, K, V, OUT, PARTIAL, MASS, RANK, SINKS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta, N_TILES, C_START, C_STOP,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    WEIGHT_ON_VALUE: tl.constexpr, FOLD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SELECT: tl.constexpr, HAS_SINKS: tl.constexpr, RANK_IS_MASS: tl.constexpr, LARGEST: tl.constexpr,
    BLOCK_TILES: tl.constexpr = 16,
):
    """OUT rows of the tile with the intervention on the head's keys: SINKS (B, H, TOP_K)
    int64 given (HAS_SINKS), or (SELECT) the top-1 candidate in [C_START, C_STOP) of the mass
    summed from PARTIAL (N_TILES, B*H, N_K), or the smallest of RANK (B*H, C_STOP - C_START)
    when given (uniform draws); then the first program of the head writes MASS (B*H, N_K)
    and SINKS (B*H,) int64. Neither: plain attention. BLOCK_N >= N_K."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_t = tl.arange(0, BLOCK_T)
    if SELECT:
        offs_n = tl.arange(0, BLOCK_N)
        mass = _head_mass(PARTIAL, bh, tl.num_programs(1), N_K, N_TILES, BLOCK_N, BLOCK_TILES)  # [BN]
        if RANK_IS_MASS:
            x = ranked_values(mass, (offs_n >= C_START) & (offs_n < C_STOP), LARGEST)
            _, best = keep_best(tl.full([], -float("inf"), tl.float32), tl.full([], 0, tl.int32), x, 0)
        else:
            best = C_START + best_of_row(RANK + bh * (C_STOP - C_START), C_STOP - C_START, LARGEST, BLOCK_N)
        if pid_m == 0:
            tl.store(MASS + bh * N_K + offs_n, mass, mask=offs_n < N_K)
            tl.store(SINKS + bh, best.to(tl.int64))
        b_sinks = tl.where(offs_t == 0, best, -1)  # [BT]
    else:
        b_sinks = _head_sinks(SINKS, bh, TOP_K, BLOCK_T, HAS_SINKS)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < N_Q
    row_applied = (offs_m >= APPLY_START) & (offs_m < APPLY_STOP)  # [BM]
    acc, l_i, m_i = _attend_rows(
        Q + b * stride_qb + h * stride_qh, K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh,
        b_sinks, offs_m, mask_m, row_applied, 0, N_K,
        stride_qm, stride_kn, stride_vn, N_K, qk_scale, eta,
        D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, SELECT or HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
    _store_rows(OUT + b * stride_ob + h * stride_oh, offs_m, mask_m, stride_om, acc, l_i, DV, BLOCK_DV)
