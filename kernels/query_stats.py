"""The tracer's per-query statistics of a few sampled query rows (issue 18): for each row,
the sum of its 5 largest attention probabilities (the original study's top-5 concentration)
and its entropy, in one pass over the keys split into key ranges, then a merge.

query_stats_kernel, per (row tile, head, key range): S = q k^T (float32 accumulation), an
online softmax (running max m, sum l = sum 2^(s - m), and a = sum 2^(s - m) s, all in log2
units), and per row and key column (a column's offset within a key tile) the 5 largest
logits seen there, kept by an elementwise compare-and-swap chain: a row's 5 largest are
among those, and are popped from them at the end (5 rounds of max and argmax, one occurrence
each, so equal logits, as identical padding keys give, count as often as they occur). It
writes the range's (m, l, a, t1..t5). query_stats_merge_kernel folds the ranges (m the max,
l and a rescaled to it, the top 5 of the ranges' top 5s: exact, ties included) and gives,
with lse2 = m + log2(l): top5 = sum_i 2^(t_i - lse2) and entropy = ln 2 * (lse2 - a / l)
(nats), per row or as the tracer's means over the rows.

History (H200, SD3-medium forward of 24 calls, probe18): torch ops ~12 ms; one program per
(row tile, head) over every key, with 5 rounds of max and argmax per key tile, 3.8 ms (192
programs, each walking ~70 key tiles one after another); the same split into key ranges of
512, 2.2 ms plus 0.6 ms for a merge of one program per batch row (probe18 run 5); with the
per-column top 5 and a merge per (batch row, head), 0.78 ms at ranges of 1024 keys and row
tiles of 64 (probe20: 32.6 us per call, merge included).
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


@triton.jit
def _pop(c1, c2, c3, c4, c5, offs_n):
    """Each row's largest of the per-column descending lists c1 >= ... >= c5 (BLOCK_M,
    BLOCK_N): it is the row's largest c1; that one column's list moves up by one."""
    best = tl.max(c1, 1)
    hit = offs_n[None, :] == tl.argmax(c1, 1)[:, None]
    return (best, tl.where(hit, c2, c1), tl.where(hit, c3, c2), tl.where(hit, c4, c3), tl.where(hit, c5, c4),
            tl.where(hit, float("-inf"), c5))


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
    # Per row and key column (the column's offset within a key tile), the 5 largest logits
    # seen there: a row's 5 largest are among them. Kept by an elementwise compare-and-swap
    # chain per tile (no reduction, no branch); the row's 5 are popped from them at the end.
    neg2 = tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32)
    c1, c2, c3, c4, c5 = neg2, neg2, neg2, neg2, neg2
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
        c1, c2, c3, c4, c5 = _insert(c1, c2, c3, c4, c5, b_s)
    t1, c1, c2, c3, c4, c5 = _pop(c1, c2, c3, c4, c5, offs_n)
    t2, c1, c2, c3, c4, c5 = _pop(c1, c2, c3, c4, c5, offs_n)
    t3, c1, c2, c3, c4, c5 = _pop(c1, c2, c3, c4, c5, offs_n)
    t4, c1, c2, c3, c4, c5 = _pop(c1, c2, c3, c4, c5, offs_n)
    t5, c1, c2, c3, c4, c5 = _pop(c1, c2, c3, c4, c5, offs_n)
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


@triton.jit(do_not_specialize=["N_ROWS", "N_SPLITS"])
def query_stats_merge_kernel(
    PART, ROW_OUT, MEAN_OUT, H, N_ROWS, N_SPLITS, stride_mean_b, stride_mean_h,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """One program per (batch row, head): PART (N_SPLITS, N_FIELDS, B*H, N_ROWS) folded over
    the key ranges (all ranges loaded side by side: m the max, l and a rescaled to it and
    summed, the top 5 of the ranges' 5 * N_SPLITS candidates) into each sampled row's top-5
    probability sum and entropy (nats). ROW_OUT (2, B*H, N_ROWS) float32 takes them per row;
    MEAN_OUT (or both) their mean over the rows at [b, h, 0] and [b, h, 1] (strides
    stride_mean_b, stride_mean_h, the two columns contiguous)."""
    bh = tl.program_id(0)
    offs_r = tl.arange(0, BLOCK_R)
    offs_s = tl.arange(0, BLOCK_S)
    offs_c = tl.arange(0, BLOCK_C)  # candidate c: range c // 5, its (c % 5)-th largest
    rows = offs_r < N_ROWS
    field = tl.num_programs(0) * N_ROWS  # one field of one range
    at_rows = bh * N_ROWS + offs_r[None, :]
    mask = (offs_s[:, None] < N_SPLITS) & rows[None, :]
    part = PART + offs_s[:, None] * (N_FIELDS * field) + at_rows
    m_s = tl.load(part, mask=mask, other=float("-inf"))
    m = tl.max(m_s, 0)
    w = tl.where(mask, tl.math.exp2(m_s - m[None, :]), 0.0)
    l_i = tl.sum(tl.load(part + field, mask=mask, other=0.0) * w, 0)
    a_i = tl.sum(tl.load(part + 2 * field, mask=mask, other=0.0) * w, 0)
    lse2 = m + tl.math.log2(l_i)
    entropy = 0.6931471805599453 * (lse2 - a_i / l_i)
    cand = tl.load(PART + (offs_c // 5)[:, None] * (N_FIELDS * field) + (3 + offs_c % 5)[:, None] * field + at_rows,
                   mask=(offs_c < 5 * N_SPLITS)[:, None] & rows[None, :], other=float("-inf"))
    top5 = tl.zeros([BLOCK_R], tl.float32)
    for _ in tl.static_range(5):  # one occurrence per round: equal logits count as often as they occur
        best = tl.max(cand, 0)
        top5 += tl.math.exp2(best - lse2)
        cand = tl.where(offs_c[:, None] == tl.argmax(cand, 0)[None, :], float("-inf"), cand)
    if ROW_OUT is not None:
        tl.store(ROW_OUT + bh * N_ROWS + offs_r, top5, mask=rows)
        tl.store(ROW_OUT + field + bh * N_ROWS + offs_r, entropy, mask=rows)
    if MEAN_OUT is not None:
        out = MEAN_OUT + (bh // H).to(tl.int64) * stride_mean_b + (bh % H) * stride_mean_h
        tl.store(out, tl.sum(tl.where(rows, top5, 0.0), 0) / N_ROWS)
        tl.store(out + 1, tl.sum(tl.where(rows, entropy, 0.0), 0) / N_ROWS)
