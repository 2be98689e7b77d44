"""Flash-style attention forward: O and the row log-sum-exp, never the Nq x Nk matrix.

One program owns BLOCK_M query rows of one (batch, head) and walks the keys in BLOCK_N
tiles with the online softmax. Scores live in the log2 domain (the scale is folded into
one multiplier with log2(e), so exp2 does the exponentials); the saved LSE is in that
domain too (``lse2 = max + log2(sum)``), which is what the key-mass and correction kernels
read. Only the last key tile is masked (sequence lengths are runtime values: no padding,
no recompiles per resolution).

The optional ``SINKS`` (B, H, TOP_K) int64 key indices (-1 for none; repeats count once)
make it the masked pass of the intervention, with per-key weight w = eta on those keys and
1 elsewhere: on the score path log2(w) is added to the logits (eta = 0 gives a -inf logit);
on the value path w scales the probabilities that multiply V but not the normaliser
(v_j <- w_j v_j). It applies to query rows in [APPLY_START, APPLY_STOP). The indices are
loaded once per program and compared with each key tile (no (B, H, Nk) weight tensor).
With ``ROW_FLAGS`` (B, H, Nq) int8 the grid is a few programs per head that walk its query
tiles and compute only those holding a flagged row: the correction route's fallback
recomputes just the flagged tiles, decided on the device, with no host synchronisation,
and costs little more than a launch when nothing is flagged (the usual case).
"""

import triton
import triton.language as tl


@triton.jit
def _attend_tile(
    acc, l_i, m_i, q, K, V, b_sinks, start_n, offs_n, offs_d, offs_dv, row_applied,
    stride_kn, stride_vn, N_K, qk_scale, eta,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    MASK_N: tl.constexpr, HAS_SINKS: tl.constexpr, WEIGHT_ON_VALUE: tl.constexpr,
    FOLD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    cols = start_n + offs_n  # [BN]
    p_k = K + cols[:, None] * stride_kn + offs_d[None, :]  # [BN, BD]
    p_v = V + cols[:, None] * stride_vn + offs_dv[None, :]  # [BN, BDV]
    if MASK_N or BLOCK_D != D:
        b_k = tl.load(p_k, mask=(cols[:, None] < N_K) & (offs_d[None, :] < D), other=0.0)
    else:
        b_k = tl.load(p_k)
    if MASK_N or BLOCK_DV != DV:
        b_v = tl.load(p_v, mask=(cols[:, None] < N_K) & (offs_dv[None, :] < DV), other=0.0)
    else:
        b_v = tl.load(p_v)
    b_s = tl.dot(q, tl.trans(b_k), input_precision=DOT_PRECISION)  # [BM, BN]
    # Scaled scores are b_s * mult. With a positive scale (FOLD_SCALE) the multiply is left
    # to the exponential's FFMA and the row max is taken on the raw products and scaled
    # after, one [BM] multiply instead of a [BM, BN] one per tile.
    if FOLD_SCALE:
        mult = qk_scale
    else:
        b_s = b_s * qk_scale
        mult = 1.0
    if MASK_N:
        b_s = tl.where(cols[None, :] < N_K, b_s, float("-inf"))
    if HAS_SINKS:
        hit = tl.max((cols[:, None] == b_sinks[None, :]).to(tl.int32), 1) > 0  # [BN]
        # Most key tiles hold no selected key: only those pay for the [BM, BN] weighting.
        tile_has_sink = tl.max(hit.to(tl.int32), 0) > 0
        if not WEIGHT_ON_VALUE:
            if tile_has_sink:
                log_w = tl.where(hit, tl.log2(eta) / mult, 0.0)  # [BN]
                b_s = b_s + tl.where(row_applied[:, None], log_w[None, :], 0.0)
    m_new = tl.maximum(m_i, tl.max(b_s, 1) * mult)  # [BM]
    if HAS_SINKS:
        # A row whose keys so far were all removed has m = -inf: keep exp2 finite.
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    b_p = tl.math.exp2(b_s * mult - m_new[:, None])  # [BM, BN]
    alpha = tl.math.exp2(m_i - m_new)  # [BM]
    l_i = l_i * alpha + tl.sum(b_p, 1)
    if HAS_SINKS:
        if WEIGHT_ON_VALUE:
            if tile_has_sink:
                b_w = tl.where(hit, eta, 1.0)  # [BN]
                b_p = b_p * tl.where(row_applied[:, None], b_w[None, :], 1.0)
    acc = acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)  # [BM, BDV]
    return acc, l_i, m_new


@triton.jit
def _attend_query_tile(
    Q, K, V, O, LSE, SINKS, pid_m, bh,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_SINKS: tl.constexpr, WEIGHT_ON_VALUE: tl.constexpr, FOLD_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """O and lse2 of the query rows [pid_m * BLOCK_M, +BLOCK_M) of head bh (int64)."""
    b = bh // H
    h = bh % H
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    LSE += bh * N_Q
    offs_t = tl.arange(0, BLOCK_T)
    if HAS_SINKS:
        b_sinks = tl.load(SINKS + bh * TOP_K + offs_t, mask=offs_t < TOP_K, other=-1).to(tl.int32)  # [BT]
    else:
        b_sinks = offs_t  # unused

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < N_Q
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    offs_dv = tl.arange(0, BLOCK_DV)  # [BDV]
    row_applied = (offs_m >= APPLY_START) & (offs_m < APPLY_STOP)  # [BM]
    b_q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :],
                  mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)  # [BM, BD]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    n_full = (N_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, b_q, K, V, b_sinks, start_n, offs_n, offs_d, offs_dv, row_applied,
            stride_kn, stride_vn, N_K, qk_scale, eta,
            D, DV, BLOCK_D, BLOCK_DV, False, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
    if n_full < N_K:
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, b_q, K, V, b_sinks, n_full, offs_n, offs_d, offs_dv, row_applied,
            stride_kn, stride_vn, N_K, qk_scale, eta,
            D, DV, BLOCK_D, BLOCK_DV, True, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)

    b_o = acc / l_i[:, None]  # [BM, BDV]
    tl.store(LSE + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)
    tl.store(O + offs_m[:, None] * stride_om + offs_dv[None, :], b_o.to(O.dtype.element_ty),
             mask=mask_m[:, None] & (offs_dv[None, :] < DV))


@triton.heuristics({
    "HAS_SINKS": lambda a: a["SINKS"] is not None,
    "HAS_ROW_FLAGS": lambda a: a["ROW_FLAGS"] is not None,
})
@triton.jit(do_not_specialize=["N_Q", "N_K", "APPLY_START", "APPLY_STOP", "TOP_K"])
def attention_forward_kernel(
    Q, K, V, O, LSE, SINKS, ROW_FLAGS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_SINKS: tl.constexpr, WEIGHT_ON_VALUE: tl.constexpr, HAS_ROW_FLAGS: tl.constexpr,
    FOLD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    if HAS_ROW_FLAGS:
        # A few programs per head (grid dim 0, chosen by the launcher) walk its query tiles
        # with a stride and compute only the tiles holding a flagged row: with none flagged
        # the pass costs a read of the flags, not a wave of programs per tile.
        bh = tl.program_id(1).to(tl.int64)
        offs = tl.arange(0, BLOCK_M)
        for pid_m in range(tl.program_id(0), tl.cdiv(N_Q, BLOCK_M), tl.num_programs(0)):
            rows = pid_m * BLOCK_M + offs
            if tl.max(tl.load(ROW_FLAGS + bh * N_Q + rows, mask=rows < N_Q, other=0), 0) != 0:
                _attend_query_tile(
                    Q, K, V, O, LSE, SINKS, pid_m, bh,
                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                    H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
                    D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, BLOCK_T, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE,
            DOT_PRECISION)
    else:
        _attend_query_tile(
            Q, K, V, O, LSE, SINKS, tl.program_id(0), tl.program_id(1).to(tl.int64),
            stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
            stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
            H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
            D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, BLOCK_T, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE,
            DOT_PRECISION)
