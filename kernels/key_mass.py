"""Per-key attention mass over a range of query rows, from the saved log-sum-exp.

Key-parallel and deterministic: one program owns BLOCK_N keys of one (batch, head) and
walks a share of the mass queries in BLOCK_M tiles, recomputing
P^T = exp2(K Q^T * scale - lse2) (the key tile is the left operand, so the sum over
queries runs along the rows of the MMA result). The probabilities are added elementwise
into a [BLOCK_N, BLOCK_M] accumulator and reduced once at the end.

The query range is cut into ``num_programs(2)`` contiguous shares (the launcher asks for
more than one when keys alone give too few programs to fill the GPU, e.g. 77 text keys);
each share writes its own partial sum and the launcher adds them in a fixed order. No
atomics anywhere: the same inputs give the same bits on every run.

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


@triton.jit(do_not_specialize=["N_K", "M_START", "M_STOP"])
def key_mass_kernel(
    Q, K, LSE, MASS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PAIRED: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
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
    MASS += (share * tl.num_programs(1) + bh) * N_K
    tl.store(MASS + offs_n, tl.sum(acc, 1) * inv_count, mask=mask_n)
