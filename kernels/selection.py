"""The most (or least) massive candidate key of every row of the (rows, Nk) key mass:
the selection of the default call (top_k = 1, per head) in one launch. torch.argmax over
48 rows of 4429 masses took 22 us on the H200, a sixth of what the correction route adds.

Same contract as sinkattn.selection.ranked_keys: ties go to the lower index, and a NaN
mass counts as the extreme (torch.argmax and argmin return the first NaN).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["N_K", "START", "STOP"])
def top1_kernel(MASS, OUT, N_K, START, STOP, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    MASS += row * N_K
    best_value = tl.full([], -float("inf"), tl.float32)
    best_index = START
    for start in range(START, STOP, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < STOP
        x = tl.load(MASS + offs, mask=inside, other=0.0)
        if not LARGEST:
            x = -x
        x = tl.where(x != x, float("inf"), x)
        x = tl.where(inside, x, -float("inf"))
        value, index = tl.max(x, 0, return_indices=True, return_indices_tie_break_left=True)
        if value > best_value:  # strictly: an equal value later in the row loses the tie
            best_value = value
            best_index = start + index
    tl.store(OUT + row, best_index.to(tl.int64))
