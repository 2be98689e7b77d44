"""Per-key attention mass over a range of query rows, from the saved log-sum-exp.

Key-parallel and deterministic: one program owns BLOCK_N keys of one (batch, head) and
walks a share of the mass queries in BLOCK_M tiles, recomputing
P^T = exp2(K Q^T * scale - lse2) (the key tile is the left operand, so the sum over
queries runs along the rows of the MMA result). The probabilities are added elementwise
into a [BLOCK_N, BLOCK_M] accumulator and reduced once at the end.

The query range is cut into ``num_programs(2)`` contiguous shares (the launcher asks for
more than one when keys alone give too few programs to fill the GPU, e.g. 77 text keys);
each share writes its own partial sum, and the last program of the head to finish adds
them in share order. The same last program also selects the call's keys when it is the
default top-1 (per head, or per batch for select="shared"), so that the selection costs no
launch of its own. Which program is last is decided by an atomic count per head (and per
batch); nothing computed depends on which one it is, only on every one having stored its
part first, so the same inputs give the same bits on every run.

Two loops, chosen by the config (``PAIRED``):
- one query tile per iteration, each tile's lse loaded one tile ahead (loaded next to its
  use, its latency from L2 was exposed in every iteration);
- two query tiles per iteration (``PAIRED``): Triton's MMAv3 pipelining (asyncLaunchDots)
  leaves a wgmma in flight only when its result is consumed in the next iteration, so
  tile a's product is synchronous and tile b's product is consumed one iteration later,
  its K Q^T running on the tensor cores during tile a's exponentials. The H200 measured
  0.384 against 0.404 ms at SD3-medium (BM 32, BN 64) and slower at Flux and SDXL
  (probe4, in git: benchmarks/probes/README.md); the autotuner chooses per head dim.
"""

import triton
import triton.language as tl

from .selection import best_of_mean, best_of_row


@triton.jit
def _load_lse(LSE, rows, m_stop):
    # Rows past the share carry lse = +inf, so their probabilities are exp2(-inf) = 0.
    return tl.load(LSE + rows, mask=rows < m_stop, other=float("inf"))


@triton.jit
def _scores_t(b_k, Q, start_m, offs_m, offs_d, stride_qm, m_stop,
              D: tl.constexpr, BLOCK_D: tl.constexpr, MASK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """K Q^T [BN, BM], unscaled, for the query tile at start_m."""
    rows = start_m + offs_m  # [BM]
    p_q = Q + rows[:, None] * stride_qm + offs_d[None, :]  # [BM, BD]
    if MASK_M:
        b_q = tl.load(p_q, mask=(rows[:, None] < m_stop) & (offs_d[None, :] < D), other=0.0)
    elif BLOCK_D != D:
        b_q = tl.load(p_q, mask=offs_d[None, :] < D, other=0.0)
    else:
        b_q = tl.load(p_q)
    return tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION)


@triton.jit
def _probabilities_t(b_k, Q, b_lse, start_m, offs_m, offs_d, stride_qm, m_stop, qk_scale,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, MASK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """P^T [BN, BM] for the query tile at start_m, given its lse [BM]."""
    b_st = _scores_t(b_k, Q, start_m, offs_m, offs_d, stride_qm, m_stop, D, BLOCK_D, MASK_M, DOT_PRECISION)
    return tl.math.exp2(b_st * qk_scale - b_lse[None, :])


@triton.jit
def _accumulate(b_k, Q, LSE, m_lo, m_hi, offs_m, offs_d, stride_qm, qk_scale,
                D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """sum over the query tiles of [m_lo, m_hi) of P^T, one tile per iteration: [BN, BM]."""
    m_full = m_lo + tl.maximum((m_hi - m_lo) // BLOCK_M, 0) * BLOCK_M
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    b_lse = _load_lse(LSE, m_lo + offs_m, m_hi)
    for start_m in range(m_lo, m_full, BLOCK_M):
        b_lse_next = _load_lse(LSE, start_m + BLOCK_M + offs_m, m_hi)
        acc += _probabilities_t(b_k, Q, b_lse, start_m, offs_m, offs_d, stride_qm, m_hi, qk_scale,
                                D, BLOCK_D, False, DOT_PRECISION)
        b_lse = b_lse_next
    if m_full < m_hi:
        acc += _probabilities_t(b_k, Q, b_lse, m_full, offs_m, offs_d, stride_qm, m_hi, qk_scale,
                                D, BLOCK_D, True, DOT_PRECISION)
    return acc


@triton.jit
def _accumulate_pairs(b_k, Q, LSE, m_lo, m_hi, offs_m, offs_d, stride_qm, qk_scale,
                      D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    """The same sum, two query tiles (a, b) per iteration; b's exponentials are taken in the
    next iteration, after a's product, so b's product overlaps a's exponentials."""
    m_pairs = m_lo + tl.maximum((m_hi - m_lo) // (2 * BLOCK_M), 0) * (2 * BLOCK_M)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # Tile b of the iteration before the first: zero scores with lse = +inf (adds 0).
    s_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    lse_b = tl.full([BLOCK_M], float("inf"), tl.float32)
    for start_m in range(m_lo, m_pairs, 2 * BLOCK_M):
        s_a = _scores_t(b_k, Q, start_m, offs_m, offs_d, stride_qm, m_hi, D, BLOCK_D, False, DOT_PRECISION)
        # The previous b tile is consumed before the new b product is issued (the other
        # order makes ptxas serialise every wgmma: warning C7514).
        acc += tl.math.exp2(s_b * qk_scale - lse_b[None, :])
        s_b = _scores_t(b_k, Q, start_m + BLOCK_M, offs_m, offs_d, stride_qm, m_hi, D, BLOCK_D, False,
                        DOT_PRECISION)
        lse_a = tl.load(LSE + start_m + offs_m)
        acc += tl.math.exp2(s_a * qk_scale - lse_a[None, :])
        lse_b = tl.load(LSE + start_m + BLOCK_M + offs_m)
    acc += tl.math.exp2(s_b * qk_scale - lse_b[None, :])
    # Fewer than two tiles are left (the last may be partial): masked, one per iteration.
    for start_m in range(m_pairs, m_hi, BLOCK_M):
        s_t = _scores_t(b_k, Q, start_m, offs_m, offs_d, stride_qm, m_hi, D, BLOCK_D, True, DOT_PRECISION)
        acc += tl.math.exp2(s_t * qk_scale - _load_lse(LSE, start_m + offs_m, m_hi)[None, :])
    return acc


@triton.jit
def _arrive(COUNTER):
    """Count this program's arrival at COUNTER (int32, zeroed by the forward pass of the same
    call); True for the last of ``expected`` programs. Every thread's stores come before the
    count (the barrier), the count is an acquire-release atomic at GPU scope, and the last
    program reads what the others stored after it (loads with .cg, from L2)."""
    tl.debug_barrier()
    arrived = tl.atomic_add(COUNTER, 1, sem="acq_rel")
    tl.debug_barrier()
    return arrived


@triton.jit(do_not_specialize=["N_K", "M_START", "M_STOP", "C_START", "C_STOP"])
def key_mass_kernel(
    Q, K, LSE, MASS, PARTIAL, COUNTERS, RANK, SINKS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count, C_START, C_STOP,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAIRED: tl.constexpr, DOT_PRECISION: tl.constexpr, MANY_SHARES: tl.constexpr, SHARED: tl.constexpr,
    HAS_SELECTION: tl.constexpr, RANK_IS_MASS: tl.constexpr, LARGEST: tl.constexpr,
    BLOCK_R: tl.constexpr = 1024,
):
    """MASS (B*H, N_K) float32. With more than one query share (MANY_SHARES: num_programs(2) > 1) each
    share writes PARTIAL (shares, B*H, N_K) and the head's last program adds them in share
    order. With SINKS (B*H,) int64 the last program of a head also picks the top-1 candidate
    in [C_START, C_STOP) per head (SHARED False) or, the last head of a batch, per batch by
    the head-mean mass (SHARED True, the same key written for every head): by the mass, or
    by RANK (groups, C_STOP - C_START) float32 when given (the uniform draws of the random
    control: its smallest). COUNTERS: the head's arrival counts (B*H), then the batch's (B)."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    share = tl.program_id(2)
    b = bh // H
    h = bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    LSE += bh * N_Q

    # This program's share of the query tiles: [m_lo, m_hi).
    tiles_per_share = tl.cdiv(tl.cdiv(M_STOP - M_START, BLOCK_M), tl.num_programs(2))
    m_lo = M_START + share * tiles_per_share * BLOCK_M
    m_hi = tl.minimum(M_STOP, m_lo + tiles_per_share * BLOCK_M)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_m = tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    mask_n = offs_n < N_K
    b_k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :],
                  mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)  # [BN, BD]
    if PAIRED:
        acc = _accumulate_pairs(b_k, Q, LSE, m_lo, m_hi, offs_m, offs_d, stride_qm, qk_scale,
                                D, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION)
    else:
        acc = _accumulate(b_k, Q, LSE, m_lo, m_hi, offs_m, offs_d, stride_qm, qk_scale,
                          D, BLOCK_D, BLOCK_M, BLOCK_N, DOT_PRECISION)
    shares = tl.num_programs(2)
    n_bh = tl.num_programs(1)
    if MANY_SHARES:
        tl.store(PARTIAL + (share * n_bh + bh) * N_K + offs_n, tl.sum(acc, 1) * inv_count, mask=mask_n)
    else:
        tl.store(MASS + bh * N_K + offs_n, tl.sum(acc, 1) * inv_count, mask=mask_n)
    if HAS_SELECTION or MANY_SHARES:
        if _arrive(COUNTERS + bh) == tl.num_programs(0) * shares - 1:  # the head's last program
            if MANY_SHARES:
                for start in range(0, N_K, BLOCK_R):
                    offs = start + tl.arange(0, BLOCK_R)  # [BR]
                    total = tl.zeros([BLOCK_R], tl.float32)
                    for s in range(shares):
                        total += tl.load(PARTIAL + (s * n_bh + bh) * N_K + offs, mask=offs < N_K, other=0.0,
                                         cache_modifier=".cg")
                    tl.store(MASS + bh * N_K + offs, total, mask=offs < N_K)
            if HAS_SELECTION:
                if SHARED:
                    # The batch's last head ranks the head-mean of its heads' masses.
                    if _arrive(COUNTERS + n_bh + b) == H - 1:
                        if RANK_IS_MASS:
                            best = best_of_mean(MASS + b * H * N_K + C_START, N_K, H, C_STOP - C_START,
                                                LARGEST, BLOCK_R)
                        else:
                            best = best_of_row(RANK + b * (C_STOP - C_START), C_STOP - C_START, LARGEST, BLOCK_R)
                        for head in range(H):
                            tl.store(SINKS + b * H + head, (C_START + best).to(tl.int64))
                else:
                    if RANK_IS_MASS:
                        tl.debug_barrier()  # this program's own stores of the mass row
                        best = best_of_row(MASS + bh * N_K + C_START, C_STOP - C_START, LARGEST, BLOCK_R)
                    else:
                        best = best_of_row(RANK + bh * (C_STOP - C_START), C_STOP - C_START, LARGEST, BLOCK_R)
                    tl.store(SINKS + bh, (C_START + best).to(tl.int64))
