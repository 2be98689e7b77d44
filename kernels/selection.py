"""Top-1 selection inside the kernels that already hold the scores: the key-mass pass's
epilogue (kernels/key_mass.py) and the short-key pass (kernels/short_keys.py) pick the most
(or least) massive candidate key, or the smallest of a row of uniform draws, without a
launch of their own. torch.argmax over 48 rows of 4429 masses took 22 us on the H200, and a
separate top-1 launch 3.5-7 us of GPU time plus ~17 us of host time per call.

Same contract as sinkattn.selection.ranked: ties go to the lower index, and a NaN counts as
the extreme (torch.argmax and argmin return the first NaN).
"""

import triton
import triton.language as tl


@triton.jit
def ranked_values(x, inside, LARGEST: tl.constexpr):
    """What the selection maximises: x (LARGEST) or -x, NaN as +inf, positions outside the
    row as -inf (they never win)."""
    if not LARGEST:
        x = -x
    x = tl.where(x != x, float("inf"), x)
    return tl.where(inside, x, -float("inf"))


@triton.jit
def keep_best(best_value, best_index, x, start):
    """Fold the ranked block x (positions start + [0, len(x))) into the running best; an equal
    value later in the row loses the tie."""
    value, index = tl.max(x, 0, return_indices=True, return_indices_tie_break_left=True)
    better = value > best_value
    return tl.where(better, value, best_value), tl.where(better, start + index, best_index)


@triton.jit
def best_of_row(ROW, n, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    """The position in [0, n) of the largest (LARGEST) or smallest of ROW[0:n] (float32)."""
    best_value = tl.full([], -float("inf"), tl.float32)
    best_index = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)  # [BLOCK]
        inside = offs < n
        x = tl.load(ROW + offs, mask=inside, other=0.0, cache_modifier=".cg")
        best_value, best_index = keep_best(best_value, best_index, ranked_values(x, inside, LARGEST), start)
    return best_index


@triton.jit
def best_of_mean(ROWS, row_stride, n_rows, n, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    """The same over the mean of n_rows rows (ROWS + r * row_stride), summed in row order:
    the head-mean mass of select="shared"."""
    best_value = tl.full([], -float("inf"), tl.float32)
    best_index = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)  # [BLOCK]
        inside = offs < n
        total = tl.zeros([BLOCK], tl.float32)
        for r in range(n_rows):
            total += tl.load(ROWS + r * row_stride + offs, mask=inside, other=0.0, cache_modifier=".cg")
        x = ranked_values(total / n_rows, inside, LARGEST)
        best_value, best_index = keep_best(best_value, best_index, x, start)
    return best_index
