"""The tracer's per-call reduction of the key mass (issue 18): one launch per attention call
where the tracer's torch ops took ~25 (a top-k, four sums, xlogy, means, gathers and cats:
~1.8 ms per SD3-medium forward of 24 calls on the H200, probe18 run 4).

mass_stats_kernel: one program per (batch row, head) and one per batch row for the head
mean (program h == H reads the head-mean mass, one torch mean before the launch: the same
op as the tracer's torch path). It walks the row's keys in tiles once and writes the tracer's row (sinkattn.tracing._COLUMNS, then the top keys, then
the selected keys): the largest mass, the top N_TOP keys' summed mass, the text and image
shares, the entropy -sum m ln m (0 ln 0 = 0), and in the two query columns NaN (no sampled
queries) or, in the head-mean row, the mean of the heads' (query_stats_merge_kernel wrote
them, one launch before); then the top N_TOP key indices (as float32) and their masses,
descending, equal masses by ascending key; then, with N_SEL > 0, the selected keys and their
masses (NaN on the head-mean rows).

The running top N_TOP lives in BLOCK_T slots (the slots past N_TOP hold +inf, so they are
never the smallest): a tile's largest enters while it exceeds the smallest slot, replacing
it; each tile costs at most N_TOP rounds of max and argmax, and past the first tiles most
rows skip them.
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["H", "N_K", "T0", "T1", "I0", "I1"])
def mass_stats_kernel(
    MASS, HEAD_MEAN, SINKS, OUT,
    stride_mb, stride_mh, stride_hb, stride_sb, stride_sh, stride_ob, stride_oh,
    H, N_K, T0, T1, I0, I1,
    FIXED: tl.constexpr, N_TOP: tl.constexpr, BLOCK_T: tl.constexpr, N_SEL: tl.constexpr,
    BLOCK_S: tl.constexpr, QUERY_MEAN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """MASS (B, H, N_K) and HEAD_MEAN (B, N_K) float32 (keys contiguous); SINKS (B, H or 1,
    N_SEL) int64 (keys contiguous; stride_sh 0 when shared) or None; OUT rows (B, H + 1) of
    FIXED + 2 N_TOP + 2 N_SEL float32 columns (columns contiguous). QUERY_MEAN: the heads'
    rows hold the query columns (5, 6) already, and the head-mean row gets their mean; else
    every row gets NaN there."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_n = tl.arange(0, BLOCK_N)
    slots = tl.arange(0, BLOCK_T)
    real = slots < N_TOP
    top_v = tl.where(real, float("-inf"), float("inf"))
    top_i = tl.zeros([BLOCK_T], tl.int32)
    text = tl.zeros([BLOCK_N], tl.float32)
    image = tl.zeros([BLOCK_N], tl.float32)
    plogp = tl.zeros([BLOCK_N], tl.float32)
    head = h < H
    h_in = tl.where(head, h, 0)
    row = MASS + b * stride_mb + h_in * stride_mh
    if not head:
        row = HEAD_MEAN + b * stride_hb
    for start in range(0, N_K, BLOCK_N):
        cols = start + offs_n
        valid = cols < N_K
        x = tl.load(row + cols, mask=valid, other=0.0)
        text += tl.where((cols >= T0) & (cols < T1), x, 0.0)
        image += tl.where((cols >= I0) & (cols < I1), x, 0.0)
        plogp += tl.where(x > 0, x * tl.log(tl.where(x > 0, x, 1.0)), 0.0)
        cand = tl.where(valid, x, float("-inf"))
        best = tl.max(cand, 0)
        for _ in tl.static_range(N_TOP):
            if best > tl.min(top_v, 0):
                where = tl.argmax(cand, 0)  # the first key of the tile's largest
                slot = tl.argmin(top_v, 0)
                top_v = tl.where(slots == slot, best, top_v)
                top_i = tl.where(slots == slot, start + where, top_i)
                cand = tl.where(offs_n == where, float("-inf"), cand)
                best = tl.max(cand, 0)
    out = OUT + b * stride_ob + h * stride_oh
    vals = tl.where(real, top_v, float("-inf"))
    tl.store(out + 1, tl.sum(tl.where(real, top_v, 0.0), 0))
    tl.store(out + 2, tl.sum(text, 0))
    tl.store(out + 3, tl.sum(image, 0))
    tl.store(out + 4, -tl.sum(plogp, 0))
    if QUERY_MEAN:
        if not head:
            heads = tl.arange(0, BLOCK_H)
            rows = OUT + b * stride_ob + heads * stride_oh
            tl.store(out + 5, tl.sum(tl.load(rows + 5, mask=heads < H, other=0.0), 0) / H)
            tl.store(out + 6, tl.sum(tl.load(rows + 6, mask=heads < H, other=0.0), 0) / H)
    else:
        tl.store(out + 5, float("nan"))
        tl.store(out + 6, float("nan"))
    for i in tl.static_range(N_TOP):  # descending mass, equal masses by ascending key
        best = tl.max(vals, 0)
        key = tl.min(tl.where(vals == best, top_i, N_K), 0)
        if i == 0:
            tl.store(out, best)
        tl.store(out + FIXED + i, key.to(tl.float32))
        tl.store(out + FIXED + N_TOP + i, best)
        vals = tl.where((vals == best) & (top_i == key), float("-inf"), vals)
    if N_SEL > 0:
        s = tl.arange(0, BLOCK_S)
        sel = s < N_SEL
        keys = tl.load(SINKS + b * stride_sb + h_in * stride_sh + s, mask=sel & head, other=0)
        mass = tl.load(row + keys, mask=sel & head, other=0.0)
        nan = float("nan")
        tl.store(out + FIXED + 2 * N_TOP + s, tl.where(head, keys.to(tl.float32), nan), mask=sel)
        tl.store(out + FIXED + 2 * N_TOP + N_SEL + s, tl.where(head, mass, nan), mask=sel)
