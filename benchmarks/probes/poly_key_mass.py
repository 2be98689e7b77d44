"""Per-key attention mass over a range of query rows, from the saved log-sum-exp.

Key-parallel and deterministic: one program owns BLOCK_N keys of one (batch, head) and
walks the mass queries in BLOCK_M tiles, recomputing P^T = exp2(K Q^T * scale - lse2)
(the key tile is the left operand, so the sum over queries runs along the rows of the
MMA result). The probabilities are added elementwise into a [BLOCK_N, BLOCK_M]
accumulator and reduced once at the end. No atomics: every key's sum is formed by one
program in a fixed order, so the same inputs give the same bits on every run.

The pass is bound by the exponentials (one per score, 16 per clock per SM on the MUFU
unit). With EXP2_FMA_EVERY = g > 0 the last tile of every g computes its exponentials
with a polynomial on the FMA pipes instead (``exp2_fma``), so both units work.
"""

import triton
import triton.language as tl

# 2^f on [-0.5, 0.5]: degree-3 fit of the relative error (max 7.6e-5 in float32 Horner,
# mean 5e-6), far inside the 1e-3 mass bar for half-precision inputs. Float32 inputs never
# use it (kernels/configs.py prunes those configs).
_C0 = tl.constexpr(0.9999287128448486)
_C1 = tl.constexpr(0.6932608485221863)
_C2 = tl.constexpr(0.24260257184505463)
_C3 = tl.constexpr(0.05516810342669487)
_ROUND = tl.constexpr(12582912.0)  # 1.5 * 2^23: adding it rounds a float32 of magnitude < 2^22 to an integer


@triton.jit
def exp2_fma(x):
    """2^x for x <= 0 without the MUFU unit: x = n + f with n = round(x), f in [-0.5, 0.5];
    2^f by the polynomial, 2^n by adding n to the exponent bits. x is clamped at -126, so
    anything smaller gives ~2^-126 (1.2e-38) instead of 0, which no mass can notice, and the
    exponent field never underflows into the sign bit; NaN stays NaN."""
    x = tl.maximum(x, -126.0, propagate_nan=tl.PropagateNan.ALL)
    shifted = x + _ROUND  # low mantissa bits of `shifted` hold n in two's complement
    f = x - (shifted - _ROUND)
    p = ((_C3 * f + _C2) * f + _C1) * f + _C0
    bits = p.to(tl.int32, bitcast=True) + (shifted.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _probabilities_t(b_k, Q, LSE, start_m, offs_m, offs_d, stride_qm, M_STOP, qk_scale,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, MASK_M: tl.constexpr,
                     ON_FMA: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """P^T [BN, BM] for the query tile at start_m."""
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
    b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION)  # [BN, BM]
    x = b_st * qk_scale - b_lse[None, :]
    if ON_FMA:
        return exp2_fma(x)
    return tl.math.exp2(x)


@triton.jit(do_not_specialize=["N_K", "M_START", "M_STOP"])
def key_mass_kernel(
    Q, K, LSE, MASS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EXP2_FMA_EVERY: tl.constexpr, DOT_PRECISION: tl.constexpr,
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
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # Full tiles in steps of GROUP tiles (the last of each on the FMA pipes), then the full
    # tiles left over, then the masked tail.
    GROUP: tl.constexpr = EXP2_FMA_EVERY if EXP2_FMA_EVERY > 0 else 1
    n_rows = M_STOP - M_START
    m_grouped = M_START + (n_rows // (GROUP * BLOCK_M)) * (GROUP * BLOCK_M)
    m_full = M_START + (n_rows // BLOCK_M) * BLOCK_M
    for start_m in range(M_START, m_grouped, GROUP * BLOCK_M):
        for s in tl.static_range(GROUP):
            acc += _probabilities_t(b_k, Q, LSE, start_m + s * BLOCK_M, offs_m, offs_d, stride_qm, M_STOP,
                                    qk_scale, D, BLOCK_D, False, EXP2_FMA_EVERY > 0 and s == GROUP - 1,
                                    DOT_PRECISION)
    for start_m in range(m_grouped, m_full, BLOCK_M):
        acc += _probabilities_t(b_k, Q, LSE, start_m, offs_m, offs_d, stride_qm, M_STOP,
                                qk_scale, D, BLOCK_D, False, False, DOT_PRECISION)
    if m_full < M_STOP:
        acc += _probabilities_t(b_k, Q, LSE, m_full, offs_m, offs_d, stride_qm, M_STOP,
                                qk_scale, D, BLOCK_D, True, False, DOT_PRECISION)
    tl.store(MASS + bh * N_K + offs_n, tl.sum(acc, 1) * inv_count, mask=mask_n)
