"""The tracer's per-query statistics of a few sampled query rows (issue 18): for each row,
the sum of its 5 largest attention probabilities (the original study's top-5 concentration)
and its entropy, in one pass over the keys, split over key ranges.

Per (row tile, head, key range) query_stats_kernel walks its key tiles once: S = q k^T
(float32 accumulation), an online softmax (running max m, sum l = sum 2^(s - m), and
a = sum 2^(s - m) s, all in log2 units), and the row's running top 5 logits, kept sorted in
five registers: each tile gives its 5 largest (5 rounds of max and argmax, removing one
occurrence each round, so equal logits, as identical padding keys give, count as often as
they occur) and each is inserted with a compare-and-swap chain. It writes the range's
(m, l, a, t1..t5). query_stats_merge_kernel folds the ranges in order (m the max, l and a
rescaled to it, the top 5 of the ranges' top 5s: exact, ties included) and writes, with
lse2 = m + log2(l): top5 = sum_i 2^(t_i - lse2) and entropy = ln 2 * (lse2 - a / l) (nats).

In torch the same statistics took ~12 ms per SD3-medium forward of 24 calls (a radix top-k,
then five max passes and the softmax's passes over a (B, H, 64, Nk) float32 tensor; probe18).
One program per (row tile, head) over all keys took 3.8 ms: 192 programs, each walking ~70
key tiles one after another (probe18 run 4); the split over key ranges is for that.
"""

import triton
import triton.language as tl

N_FIELDS = tl.constexpr(8)  # per row and key range: m, l, a, t1..t5


@triton.jit
def _insert(t1, t2, t3, t4, t5, x):
    """x into the descending (t1 >= ... >= t5), the smallest falling out."""
    n1 = tl.maximum(t1, x)
    x = tl.minimum(t1, x)
    n2 = tl.maximum(t2, x)
    x = tl.minimum(t2, x)
    n3 = tl.maximum(t3, x)
    x = tl.minimum(t3, x)
    n4 = tl.maximum(t4, x)
    x = tl.minimum(t4, x)
    n5 = tl.maximum(t5, x)
    return n1, n2, n3, n4, n5


@triton.jit(do_not_specialize=["N_ROWS", "N_K", "KEYS_PER_SPLIT"])
def query_stats_kernel(
    Q, K, ROWS, PART,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    H, N_ROWS, N_K, KEYS_PER_SPLIT, qk_scale,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """PART (splits, N_FIELDS, B*H, N_ROWS) float32: (m, l, a, t1..t5) of each sampled row
    ROWS[i] (int64 query indices) over the keys [split * KEYS_PER_SPLIT, + KEYS_PER_SPLIT)
    (a multiple of BLOCK_N; no range is empty). qk_scale: the score scale times log2(e)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N_ROWS
    rows = tl.load(ROWS + offs_m, mask=mask_m, other=0)
    b_q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qm + offs_d[None, :],
                  mask=mask_m[:, None] & (offs_d[None, :] < D), other=0.0)
    neg = tl.full([BLOCK_M], float("-inf"), tl.float32)
    m_i = neg
    l_i = tl.zeros([BLOCK_M], tl.float32)
    a_i = tl.zeros([BLOCK_M], tl.float32)
    t1, t2, t3, t4, t5 = neg, neg, neg, neg, neg
    lo = split * KEYS_PER_SPLIT
    hi = tl.minimum(lo + KEYS_PER_SPLIT, N_K)
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        mask_n = cols < hi
        b_k = tl.load(K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kn + offs_d[None, :],
                      mask=mask_n[:, None] & (offs_d[None, :] < D), other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale  # log2 units
        b_s = tl.where(mask_n[None, :], b_s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(b_s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        b_p = tl.math.exp2(b_s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(b_p, 1)
        a_i = a_i * alpha + tl.sum(b_p * tl.where(mask_n[None, :], b_s, 0.0), 1)
        m_i = m_new
        # Only logits above a row's 5th largest so far can enter its top 5: past the first
        # tiles most tiles hold none, and their rounds are skipped (a branch per round on
        # the whole block; a row with nothing left inserts -inf, which falls out).
        b_s = tl.where(b_s > t5[:, None], b_s, float("-inf"))
        best = tl.max(b_s, 1)
        for _ in tl.static_range(5):
            if tl.max(best, 0) > float("-inf"):
                where = tl.argmax(b_s, 1)
                t1, t2, t3, t4, t5 = _insert(t1, t2, t3, t4, t5, best)
                b_s = tl.where(offs_n[None, :] == where[:, None], float("-inf"), b_s)
                best = tl.max(b_s, 1)
    field = tl.num_programs(1).to(tl.int64) * N_ROWS  # one field of one range
    out = PART + split.to(tl.int64) * (N_FIELDS * field) + bh * N_ROWS + offs_m
    tl.store(out, m_i, mask=mask_m)
    tl.store(out + field, l_i, mask=mask_m)
    tl.store(out + 2 * field, a_i, mask=mask_m)
    tl.store(out + 3 * field, t1, mask=mask_m)
    tl.store(out + 4 * field, t2, mask=mask_m)
    tl.store(out + 5 * field, t3, mask=mask_m)
    tl.store(out + 6 * field, t4, mask=mask_m)
    tl.store(out + 7 * field, t5, mask=mask_m)


@triton.jit(do_not_specialize=["H", "N_ROWS", "N_SPLITS"])
def query_stats_merge_kernel(
    PART, ROW_OUT, MEAN_OUT, H, N_ROWS, N_SPLITS, stride_mean_b, stride_mean_h,
    BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One program per batch row: PART (N_SPLITS, N_FIELDS, B*H, N_ROWS) folded over the key
    ranges in order (deterministic) into each sampled row's top-5 probability sum and entropy
    (nats). ROW_OUT (2, B*H, N_ROWS) float32 takes them per row; MEAN_OUT (or both) takes
    their mean over the rows per head at [b, h, 0] and [b, h, 1] (strides stride_mean_b,
    stride_mean_h, the two columns contiguous) and the mean of those over the heads at
    [b, H, 0:2] (the tracer's head-mean row)."""
    b = tl.program_id(0)
    offs_h = tl.arange(0, BLOCK_H)
    offs_r = tl.arange(0, BLOCK_R)
    heads = offs_h < H
    mask = heads[:, None] & (offs_r[None, :] < N_ROWS)
    field = tl.num_programs(0) * H * N_ROWS  # one field of one range
    index = (b * H + offs_h[:, None]) * N_ROWS + offs_r[None, :]
    neg = tl.full([BLOCK_H, BLOCK_R], float("-inf"), tl.float32)
    m_i = neg
    l_i = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    a_i = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    t1, t2, t3, t4, t5 = neg, neg, neg, neg, neg
    for split in range(0, N_SPLITS):
        part = PART + split * (N_FIELDS * field) + index
        m_s = tl.load(part, mask=mask, other=0.0)
        m_new = tl.maximum(m_i, m_s)
        alpha, beta = tl.math.exp2(m_i - m_new), tl.math.exp2(m_s - m_new)
        l_i = l_i * alpha + tl.load(part + field, mask=mask, other=0.0) * beta
        a_i = a_i * alpha + tl.load(part + 2 * field, mask=mask, other=0.0) * beta
        m_i = m_new
        for i in tl.static_range(3, N_FIELDS):
            t1, t2, t3, t4, t5 = _insert(t1, t2, t3, t4, t5,
                                         tl.load(part + i * field, mask=mask, other=float("-inf")))
    lse2 = m_i + tl.math.log2(l_i)
    top5 = (tl.math.exp2(t1 - lse2) + tl.math.exp2(t2 - lse2) + tl.math.exp2(t3 - lse2)
            + tl.math.exp2(t4 - lse2) + tl.math.exp2(t5 - lse2))
    entropy = 0.6931471805599453 * (lse2 - a_i / l_i)
    if ROW_OUT is not None:
        tl.store(ROW_OUT + index, top5, mask=mask)
        tl.store(ROW_OUT + field + index, entropy, mask=mask)
    if MEAN_OUT is not None:
        top5_h = tl.sum(tl.where(mask, top5, 0.0), 1) / N_ROWS
        entropy_h = tl.sum(tl.where(mask, entropy, 0.0), 1) / N_ROWS
        out = MEAN_OUT + b.to(tl.int64) * stride_mean_b
        tl.store(out + offs_h * stride_mean_h, top5_h, mask=heads)
        tl.store(out + offs_h * stride_mean_h + 1, entropy_h, mask=heads)
        tl.store(out + H * stride_mean_h, tl.sum(tl.where(heads, top5_h, 0.0), 0) / H)
        tl.store(out + H * stride_mean_h + 1, tl.sum(tl.where(heads, entropy_h, 0.0), 0) / H)
