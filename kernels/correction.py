"""Exact correction of the unintervened output with the few intervened keys only.

With p_j = exp2(s_j - lse2) the unintervened probabilities, f = 1 - eta and J the
intervened keys of a row:
  value path: O' = O - f * sum_J p_j v_j
  score path: O' = (O - f * sum_J p_j v_j) / (1 - f * sum_J p_j)
This costs O(Nq * |J| * D) instead of another attention pass. The forward rounded each
p_j to the input precision before its P V product, so the subtraction leaves an error of
about eps * f * sum_J p_j |v_j| in the row; FLAG marks rows where that exceeds
max_amplification * eps * |O - f sum_J p_j v_j| (the row would lose accuracy), and on the
score path rows whose kept mass 1 - f sum_J p_j is below MIN_KEPT_MASS. A program
(one query tile) holding such a row takes the next slot from SLOT_COUNT (the first of the
call's counters, zeroed by its forward pass) and writes its tile's number
(bh * tiles per head + tile) there in TILE_LIST; kernels/attention.py's flagged_tiles_kernel
then recomputes those tiles with the masked pass, reading the list (two dependent loads per
program instead of a walk over every tile's slot). Slots follow the programs' order of
arrival, but nothing computed depends on them, only on how many there are.
Indices < 0 in SINKS are skipped (duplicates are marked so by the launcher).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["N_Q", "TOP_K", "APPLY_START", "APPLY_STOP"])
def correction_kernel(
    Q, K, V, O32, LSE, SINKS, OUT, TILE_LIST, SLOT_COUNT,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    stride_outb, stride_outh, stride_outm,
    H, N_Q, TOP_K, APPLY_START, APPLY_STOP, qk_scale, removal, max_amplification,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, SCORE_PATH: tl.constexpr, MIN_KEPT_MASS: tl.constexpr = 1.0 / 256,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O32 += b * stride_ob + h * stride_oh
    OUT += b * stride_outb + h * stride_outh
    LSE += bh * N_Q
    SINKS += bh * TOP_K

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    offs_dv = tl.arange(0, BLOCK_DV)  # [BDV]
    mask_m = offs_m < N_Q
    mask_d = offs_d < D
    mask_dv = offs_dv < DV
    b_q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :],
                  mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(tl.float32)  # [BM, BD]
    b_o = tl.load(O32 + offs_m[:, None] * stride_om + offs_dv[None, :],
                  mask=mask_m[:, None] & mask_dv[None, :], other=0.0)  # [BM, BDV]
    b_lse = tl.load(LSE + offs_m, mask=mask_m, other=0.0)  # [BM]

    b_removed = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # sum_J p_j v_j
    b_mass = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_J p_j
    b_bound = tl.zeros([BLOCK_M], dtype=tl.float32)  # sum_J p_j |v_j|
    for t in range(TOP_K):
        j = tl.load(SINKS + t)
        valid = j >= 0
        j = tl.maximum(j, 0).to(tl.int64)
        b_kj = tl.load(K + j * stride_kn + offs_d, mask=mask_d, other=0.0).to(tl.float32)  # [BD]
        b_vj = tl.load(V + j * stride_vn + offs_dv, mask=mask_dv, other=0.0).to(tl.float32)  # [BDV]
        b_s = tl.sum(b_q * b_kj[None, :], 1) * qk_scale  # [BM]
        b_p = tl.where(valid, tl.math.exp2(b_s - b_lse), 0.0)  # [BM]
        b_removed += b_p[:, None] * b_vj[None, :]
        b_mass += b_p
        b_bound += b_p * tl.sqrt(tl.sum(b_vj * b_vj, 0))

    b_num = b_o - removal * b_removed  # [BM, BDV]
    if SCORE_PATH:
        b_new = b_num / (1.0 - removal * b_mass)[:, None]
    else:
        b_new = b_num
    applied = mask_m & (offs_m >= APPLY_START) & (offs_m < APPLY_STOP)  # [BM]
    b_out = tl.where(applied[:, None], b_new, b_o)
    tl.store(OUT + offs_m[:, None] * stride_outm + offs_dv[None, :], b_out.to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & mask_dv[None, :])
    num_norm = tl.sqrt(tl.sum(b_num * b_num, 1))  # [BM]
    ill = applied & (removal * b_bound > max_amplification * num_norm)
    if SCORE_PATH:
        # The kept mass 1 - f * sum_J p_j is a difference of two numbers near 1 when the
        # selected keys hold almost all of it: below MIN_KEPT_MASS its rounding (~1e-7)
        # outweighs the output's precision, whatever the numerator (zero value vectors of
        # the removed keys make the bound above 0).
        ill = ill | (applied & (1.0 - removal * b_mass < MIN_KEPT_MASS))
    any_ill = tl.max(ill.to(tl.int32), 0) > 0
    slot = tl.atomic_add(SLOT_COUNT, 1, mask=any_ill)
    tl.store(TILE_LIST + slot, (bh * tl.num_programs(0) + pid_m).to(tl.int32), mask=any_ill)
