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

``flagged_tiles_kernel`` is the correction route's fallback: it recomputes with the masked
pass only the query tiles that the correction kernel listed (tiles holding a row whose
correction would lose accuracy), decided on the device with no host synchronisation. Each
program reads the count and, if it has an entry, the entry's tile number (two dependent
loads; the walk over every tile's slot it replaced cost ~20 us at SD3), so with nothing
flagged it costs little more than a launch. One flagged tile alone would be one program's serial walk over every key tile
(latency-bound, ~75 us at SD3 on an H200), so when few tiles are flagged (at most
MAX_SPLIT_TILES in all) each one's keys are cut into KEY_SPLITS ranges computed by different
programs, each writing its (O, lse) partial into the tile's slot; the last range of a tile to
finish (an arrival count per slot) merges the tile's partials in range order (flash-decoding's
merge; deterministic: the order is fixed whoever merges, no atomics on values). With more
tiles flagged there is parallelism enough across tiles, and each is computed whole, straight
into the output.

The forward pass zeroes the call's counters (``COUNTERS``): the correction's slot count, the
flagged pass's arrivals per slot and the key-mass pass's arrivals per head and batch. The
kernels of one call run in order on one stream, so no call needs a memset of its own.
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
    m_exp = m_new
    if HAS_SINKS:
        # A row whose keys so far were all removed keeps m = -inf as its running max (a
        # finite stand-in carried on would underflow every later exponential: issue 13);
        # only the exponentials of this tile use 0 in its place, giving exp2(-inf) = 0.
        m_exp = tl.where(m_new == float("-inf"), 0.0, m_new)
    b_p = tl.math.exp2(b_s * mult - m_exp[:, None])  # [BM, BN]
    alpha = tl.math.exp2(m_i - m_exp)  # [BM]
    l_i = l_i * alpha + tl.sum(b_p, 1)
    if HAS_SINKS:
        if WEIGHT_ON_VALUE:
            if tile_has_sink:
                b_w = tl.where(hit, eta, 1.0)  # [BN]
                b_p = b_p * tl.where(row_applied[:, None], b_w[None, :], 1.0)
    acc = acc * alpha[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)  # [BM, BDV]
    return acc, l_i, m_new


@triton.jit
def _attend_rows(
    Q, K, V, b_sinks, offs_m, mask_m, row_applied, n_lo, n_hi,
    stride_qm, stride_kn, stride_vn, N_K, qk_scale, eta,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SINKS: tl.constexpr, WEIGHT_ON_VALUE: tl.constexpr, FOLD_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online softmax of the query rows offs_m over the keys [n_lo, n_hi) (n_lo on a tile
    boundary; only a range ending at N_K may end inside a tile). Q, K, V point at the head.
    Returns (acc, l, m): O = acc / l, lse2 = m + log2(l)."""
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    offs_dv = tl.arange(0, BLOCK_DV)  # [BDV]
    b_q = tl.load(Q + offs_m[:, None] * stride_qm + offs_d[None, :],
                  mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)  # [BM, BD]
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    n_full = n_lo + tl.maximum(n_hi - n_lo, 0) // BLOCK_N * BLOCK_N
    for start_n in range(n_lo, n_full, BLOCK_N):
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, b_q, K, V, b_sinks, start_n, offs_n, offs_d, offs_dv, row_applied,
            stride_kn, stride_vn, N_K, qk_scale, eta,
            D, DV, BLOCK_D, BLOCK_DV, False, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
    if n_full < n_hi:
        acc, l_i, m_i = _attend_tile(
            acc, l_i, m_i, b_q, K, V, b_sinks, n_full, offs_n, offs_d, offs_dv, row_applied,
            stride_kn, stride_vn, N_K, qk_scale, eta,
            D, DV, BLOCK_D, BLOCK_DV, True, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _store_rows(OUT, offs_m, mask_m, stride_om, numer, denom, DV: tl.constexpr, BLOCK_DV: tl.constexpr):
    """OUT[offs_m] = numer / denom per row, in OUT's dtype; OUT points at the head, rows
    outside mask_m and columns past DV are not written."""
    offs_dv = tl.arange(0, BLOCK_DV)
    tl.store(OUT + offs_m[:, None] * stride_om + offs_dv[None, :], (numer / denom[:, None]).to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _head_sinks(SINKS, bh, TOP_K, BLOCK_T: tl.constexpr, HAS_SINKS: tl.constexpr):
    offs_t = tl.arange(0, BLOCK_T)
    if HAS_SINKS:
        return tl.load(SINKS + bh * TOP_K + offs_t, mask=offs_t < TOP_K, other=-1).to(tl.int32)  # [BT]
    return offs_t  # unused


@triton.jit(do_not_specialize=["N_Q", "N_K", "APPLY_START", "APPLY_STOP", "TOP_K", "N_COUNTERS"])
def attention_forward_kernel(
    Q, K, V, O, LSE, SINKS, ROW_PEAK, COUNTERS, N_COUNTERS,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_SINKS: tl.constexpr, WEIGHT_ON_VALUE: tl.constexpr, FOLD_SCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, HAS_ROW_PEAK: tl.constexpr, HAS_COUNTERS: tl.constexpr,
):
    """O and lse2 of the query rows [pid_m * BLOCK_M, +BLOCK_M) of head bh; with ROW_PEAK
    (B, H, Nq) float32 also each row's largest probability, 2^(max - lse2) = 1 / l (the
    query-side controls rank queries by it). HAS_* say which optional pointers are given (the
    launcher passes them: Triton's heuristics wrapper rebuilt a dict of every argument per
    flag and call, ~6 us of host time each). With COUNTERS (N_COUNTERS int32) the first
    program zeroes them: the arrival and slot counts that the later kernels of the same call
    (key mass, correction, flagged tiles) count with, so that no call needs a memset."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    if HAS_COUNTERS:
        if (pid_m == 0) & (bh == 0):
            for start in range(0, N_COUNTERS, 128):
                offs = start + tl.arange(0, 128)
                tl.store(COUNTERS + offs, tl.zeros([128], tl.int32), mask=offs < N_COUNTERS)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < N_Q
    row_applied = (offs_m >= APPLY_START) & (offs_m < APPLY_STOP)  # [BM]
    acc, l_i, m_i = _attend_rows(
        Q + b * stride_qb + h * stride_qh, K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh,
        _head_sinks(SINKS, bh, TOP_K, BLOCK_T, HAS_SINKS), offs_m, mask_m, row_applied, 0, N_K,
        stride_qm, stride_kn, stride_vn, N_K, qk_scale, eta,
        D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, HAS_SINKS, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
    tl.store(LSE + bh * N_Q + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)
    if HAS_ROW_PEAK:
        tl.store(ROW_PEAK + bh * N_Q + offs_m, 1.0 / l_i, mask=mask_m)
    _store_rows(O + b * stride_ob + h * stride_oh, offs_m, mask_m, stride_om, acc, l_i, DV, BLOCK_DV)


@triton.jit(do_not_specialize=["N_Q", "N_K", "APPLY_START", "APPLY_STOP", "TOP_K", "KEY_SPLITS"])
def flagged_tiles_kernel(
    Q, K, V, OUT, SINKS, TILE_LIST, COUNTERS, PART_O, PART_LSE,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta, KEY_SPLITS, MAX_SPLIT_TILES,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    WEIGHT_ON_VALUE: tl.constexpr, FOLD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The masked pass over the query tiles of TILE_LIST (int32 tile numbers, bh * tiles per
    head + tile, in slot order). COUNTERS: how many slots the correction kernel handed out,
    then one arrival count per slot (zeroed by the forward of the same call).
    Grid: (P >= MAX_SPLIT_TILES, KEY_SPLITS). When at most MAX_SPLIT_TILES tiles are flagged
    (split mode) program (i, s) computes key range s of slot i's tile into PART_O
    (MAX_SPLIT_TILES, KEY_SPLITS, BLOCK_M, DV) float32 and PART_LSE (..., BLOCK_M), and the
    last range of a tile to arrive merges the tile's partials in range order into OUT
    (flash-decoding's merge, deterministic: the order is the ranges', whoever merges);
    otherwise the programs stride over the list, each tile whole into OUT."""
    count = tl.load(COUNTERS)
    entry = tl.program_id(0)
    split = tl.program_id(1)
    n_tiles = tl.cdiv(N_Q, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    if count <= MAX_SPLIT_TILES:
        if entry < count:
            keys_per_split = tl.cdiv(tl.cdiv(N_K, BLOCK_N), KEY_SPLITS) * BLOCK_N
            n_lo = split * keys_per_split
            acc, l_i, m_i, offs_m, mask_m, out = _flagged_tile(
                Q, K, V, OUT, SINKS, tl.load(TILE_LIST + entry), n_tiles, n_lo, tl.minimum(n_lo + keys_per_split, N_K),
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                stride_ob, stride_oh, H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
                D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, BLOCK_T, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
            # A range whose keys are all removed for a row leaves l = 0: lse2 = -inf there,
            # and the merge gives that partial no weight.
            base = entry.to(tl.int64) * KEY_SPLITS * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM], range 0
            part = base + split * BLOCK_M
            tl.store(PART_LSE + part, m_i + tl.math.log2(l_i))
            tl.store(PART_O + part[:, None] * DV + offs_dv[None, :], acc / l_i[:, None], mask=offs_dv[None, :] < DV)
            tl.debug_barrier()
            arrived = tl.atomic_add(COUNTERS + 1 + entry, 1, sem="acq_rel")
            tl.debug_barrier()
            if arrived == KEY_SPLITS - 1:
                _merge_splits(out, PART_O, PART_LSE, base, offs_m, mask_m, stride_om, KEY_SPLITS,
                              DV, BLOCK_DV, BLOCK_M)
    else:
        for index in range(entry * KEY_SPLITS + split, count, tl.num_programs(0) * KEY_SPLITS):
            acc, l_i, m_i, offs_m, mask_m, out = _flagged_tile(
                Q, K, V, OUT, SINKS, tl.load(TILE_LIST + index), n_tiles, 0, N_K,
                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                stride_ob, stride_oh, H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
                D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, BLOCK_T, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
            _store_rows(out, offs_m, mask_m, stride_om, acc, l_i, DV, BLOCK_DV)


@triton.jit
def _flagged_tile(
    Q, K, V, OUT, SINKS, tile, n_tiles, n_lo, n_hi,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, H, N_Q, N_K, APPLY_START, APPLY_STOP, qk_scale, TOP_K, eta,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
    WEIGHT_ON_VALUE: tl.constexpr, FOLD_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The masked attention of flagged tile number ``tile`` over the keys [n_lo, n_hi):
    (acc, l, m, its rows, their mask, OUT at its head)."""
    bh = (tile // n_tiles).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = (tile % n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < N_Q
    row_applied = (offs_m >= APPLY_START) & (offs_m < APPLY_STOP)
    acc, l_i, m_i = _attend_rows(
        Q + b * stride_qb + h * stride_qh, K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh,
        _head_sinks(SINKS, bh, TOP_K, BLOCK_T, True), offs_m, mask_m, row_applied, n_lo, n_hi,
        stride_qm, stride_kn, stride_vn, N_K, qk_scale, eta,
        D, DV, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, True, WEIGHT_ON_VALUE, FOLD_SCALE, DOT_PRECISION)
    return acc, l_i, m_i, offs_m, mask_m, OUT + b * stride_ob + h * stride_oh


@triton.jit
def _merge_splits(OUT, PART_O, PART_LSE, base, offs_m, mask_m, stride_om, KEY_SPLITS,
                  DV: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    """OUT rows offs_m = sum_s 2^(lse_s - lse) O_s with lse = log2 sum_s 2^lse_s, the ranges s
    taken in order (partials at base + s * BLOCK_M, read from L2: other programs wrote them)."""
    offs_dv = tl.arange(0, BLOCK_DV)
    lse_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(KEY_SPLITS):
        lse_max = tl.maximum(lse_max, tl.load(PART_LSE + base + s * BLOCK_M, cache_modifier=".cg"))
    weight_sum = tl.zeros([BLOCK_M], tl.float32)
    b_o = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for s in range(KEY_SPLITS):
        part = base + s * BLOCK_M
        weight = tl.math.exp2(tl.load(PART_LSE + part, cache_modifier=".cg") - lse_max)  # 0 for an empty range
        b_part = tl.load(PART_O + part[:, None] * DV + offs_dv[None, :], mask=offs_dv[None, :] < DV, other=0.0,
                         cache_modifier=".cg")
        b_o += tl.where(weight[:, None] > 0, weight[:, None] * b_part, 0.0)
        weight_sum += weight
    _store_rows(OUT, offs_m, mask_m, stride_om, b_o, weight_sum, DV, BLOCK_DV)
