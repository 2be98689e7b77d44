"""Per-key attention mass over a range of query rows, from the saved log-sum-exp.

Key-parallel and deterministic: one program owns BLOCK_N keys of one (batch, head) and
walks the mass queries in BLOCK_M tiles, recomputing P^T = exp2(K Q^T * scale - lse2) and
summing along its rows (the key tile is the left operand, so the reduction runs along the
rows of the MMA result). No atomics: every key's sum is formed by one program in a fixed
order, so the same inputs give the same bits on every run.
"""

import triton
import triton.language as tl


@triton.jit
def _scores_t(b_k, Q, LSE, start_m, offs_m, offs_d, stride_qm, M_STOP,
              D: tl.constexpr, BLOCK_D: tl.constexpr, MASK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """(K Q^T [BN, BM] unscaled, lse2 [BM]) for the query tile at start_m."""
    rows = start_m + offs_m  # [BM]
    p_q = Q + rows[:, None] * stride_qm + offs_d[None, :]  # [BM, BD]
    if MASK_M:
        b_q = tl.load(p_q, mask=(rows[:, None] < M_STOP) & (offs_d[None, :] < D), other=0.0)
        # Rows past M_STOP carry lse = +inf, so their probabilities are exp2(-inf) = 0.
        b_lse = tl.load(LSE + rows, mask=rows < M_STOP, other=float("inf"))  # [BM]
    else:
        if BLOCK_D != D:
            b_q = tl.load(p_q, mask=offs_d[None, :] < D, other=0.0)
        else:
            b_q = tl.load(p_q)
        b_lse = tl.load(LSE + rows)
    return tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION), b_lse


@triton.jit
def _column_mass(b_st, b_lse, qk_scale):
    return tl.sum(tl.math.exp2(b_st * qk_scale - b_lse[None, :]), 1)  # [BN]


@triton.jit(do_not_specialize=["N_K", "M_START", "M_STOP"])
def key_mass_kernel(
    Q, K, LSE, MASS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    LSE += bh * N_Q

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_m = tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    mask_n = offs_n < N_K
    b_k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :],
                  mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)  # [BN, BD]
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    m_full = M_START + ((M_STOP - M_START) // BLOCK_M) * BLOCK_M
    if m_full > M_START:
        # Software-pipelined by hand: the scores of tile i + 1 are issued before the
        # exponentials of tile i, so the tensor cores and the exp unit can overlap.
        b_st, b_lse = _scores_t(b_k, Q, LSE, M_START, offs_m, offs_d, stride_qm, M_STOP,
                                D, BLOCK_D, False, DOT_PRECISION)
        for start_m in range(M_START + BLOCK_M, m_full, BLOCK_M):
            b_st_next, b_lse_next = _scores_t(b_k, Q, LSE, start_m, offs_m, offs_d, stride_qm, M_STOP,
                                              D, BLOCK_D, False, DOT_PRECISION)
            acc += _column_mass(b_st, b_lse, qk_scale)
            b_st, b_lse = b_st_next, b_lse_next
        acc += _column_mass(b_st, b_lse, qk_scale)
    if m_full < M_STOP:
        b_st, b_lse = _scores_t(b_k, Q, LSE, m_full, offs_m, offs_d, stride_qm, M_STOP,
                                D, BLOCK_D, True, DOT_PRECISION)
        acc += _column_mass(b_st, b_lse, qk_scale)
    tl.store(MASS + bh * N_K + offs_n, acc * inv_count, mask=mask_n)
