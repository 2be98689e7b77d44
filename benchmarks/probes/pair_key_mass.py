"""Candidate key-mass kernel for the next device session (not shipped, not measured yet):
two query tiles per iteration so that Triton 3.x makes one of the two K Q^T products
properly asynchronous.

Triton's MMAv3 pipelining (asyncLaunchDots) leaves a wgmma in flight only when its result
is consumed in the next iteration after a `wait 0` of the current one. Here tile a's
product is synchronous (its wait is that `wait 0`), tile b's product is yielded and its
exponentials are taken in the next iteration, after a's wait; this iteration's
exponentials of tile a run while tile b's product is on the tensor cores.

Checked on the CPU machine (triton 3.8, sm_90 target): the TTGIR has b's warp_group_dot
without a wait in the loop, and ptxas reports no wgmma serialisation when the previous b
tile is consumed before the new b product is issued (the other order makes ptxas serialise
every wgmma: C7514). In the SASS ~26 of the 64 exponentials per iteration sit after b's
HGMMA, the rest were hoisted above it by ptxas.

Same signature, shares and masking as sinkattn.kernels.key_mass.key_mass_kernel, whose
tile helpers it uses.
"""

import triton
import triton.language as tl

from sinkattn.kernels.key_mass import _load_lse, _scores_t


@triton.jit(do_not_specialize=["N_K", "M_START", "M_STOP"])
def key_mass_pair_kernel(
    Q, K, LSE, MASS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    share = tl.program_id(2)
    b = bh // H
    h = bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    LSE += bh * N_Q

    tiles_per_share = tl.cdiv(tl.cdiv(M_STOP - M_START, BLOCK_M), tl.num_programs(2))
    m_lo = M_START + share * tiles_per_share * BLOCK_M
    m_hi = tl.minimum(M_STOP, m_lo + tiles_per_share * BLOCK_M)
    m_pairs = m_lo + tl.maximum((m_hi - m_lo) // (2 * BLOCK_M), 0) * (2 * BLOCK_M)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N_K
    b_k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :],
                  mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # Tile b of the iteration before the first: zero scores with lse = +inf (adds 0).
    s_b = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    lse_b = tl.full([BLOCK_M], float("inf"), tl.float32)
    for start_m in range(m_lo, m_pairs, 2 * BLOCK_M):
        s_a = _scores_t(b_k, Q, start_m, offs_m, offs_d, stride_qm, m_hi, D, BLOCK_D, False, DOT_PRECISION)
        acc += tl.math.exp2(s_b * qk_scale - lse_b[None, :])  # before the new b product is issued
        s_b = _scores_t(b_k, Q, start_m + BLOCK_M, offs_m, offs_d, stride_qm, m_hi, D, BLOCK_D, False,
                        DOT_PRECISION)
        lse_a = tl.load(LSE + start_m + offs_m)
        acc += tl.math.exp2(s_a * qk_scale - lse_a[None, :])
        lse_b = tl.load(LSE + start_m + BLOCK_M + offs_m)
    acc += tl.math.exp2(s_b * qk_scale - lse_b[None, :])
    # Fewer than two tiles are left (the last may be partial): masked, synchronous.
    for start_m in range(m_pairs, m_hi, BLOCK_M):
        s_t = _scores_t(b_k, Q, start_m, offs_m, offs_d, stride_qm, m_hi, D, BLOCK_D, True, DOT_PRECISION)
        acc += tl.math.exp2(s_t * qk_scale - _load_lse(LSE, start_m + offs_m, m_hi)[None, :])
    MASS += (share * tl.num_programs(1) + bh) * N_K
    tl.store(MASS + offs_n, tl.sum(acc, 1) * inv_count, mask=mask_n)
