"""Warp-specialised attention forward for Hopper (sm_90), in Gluon: the plain pass of
``attention.attention_forward_kernel`` (O and lse2, and the call's counters zeroed), FlashAttention-3's
schedule. ``sinkattn.launch.attention`` launches it on sm_90 when the call allows it
(``launch.hopper_forward_fits``); everywhere else, under the interpreter and in CI, the
Triton forward runs. Both are checked against the reference by the same tests.

One program owns 2 x BLOCK_M query rows of one (batch, head), in three partitions
(``gl.warp_specialize``):

- a producer warp: TMA loads of the two Q tiles, then of the K and V tiles of BLOCK_N keys
  into rings of STAGES shared-memory slots (ready barriers count TMA bytes; empty barriers
  take one arrival from each consumer);
- two consumer warpgroups (the default partition and a worker) of BLOCK_M = 64 rows each
  (one wgmma M), each with its own online softmax. Within a warpgroup, S_j = Q K_j^T and
  O += P_{j-1} V_{j-1} are issued together (async wgmma, P from registers); the softmax of
  S_j runs while the P V product computes, then O is rescaled. With PINGPONG the two
  warpgroups take turns to issue their products (an mbarrier each), so that one's softmax
  overlaps the other's products.

Scores stay raw (Q K^T); the positive scale times log2(e) is folded into the exponentials'
FFMA, so the kernel takes scale > 0 only (the launcher sends other scales to Triton). Keys
past N_K are masked to -inf on the first and last key tiles only.

Q, K and V are read through 2-D TMA descriptors over the tensor's storage, rows of stride
``stride(2)``: the tile of (b, h) starts at element b * stride(0) + h * stride(1). A tile
past a head's last row reads the following rows of the same tensor (the next head or batch:
finite values, masked to -inf or, for V, multiplied by an exact zero) or TMA's zero fill past
the storage's end: ``launch.hopper_forward_fits`` admits only the two layouts where that
holds (diffusers' (B, N, H*D) view, contiguous (B, H, N, D)).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

# By head dim, where this kernel beats the Triton forward on the H200 (kernels/NOTES.md,
# sessions 11-12: at head dim 64 no variant measured, two or three consumer warpgroups,
# persistent or not, beat it by more than 3.4% at SD3 shapes, and each lost at SDXL self;
# those calls keep the Triton forward): BLOCK_N keys per tile and STAGES ring slots. The K and V
# rings take 2 * STAGES * BLOCK_N * D * 2 bytes beside the Q tiles' 2 * BLOCK_M * D * 2
# (128 KiB + 32 KiB at D 128). Three warpgroups (the 1-warp producer padded to one) at
# MAXNREG registers a thread fill the register file; setmaxnreg then moves them from the
# producer (PRODUCER_REGS) to the two consumers (CONSUMER_REGS).
BLOCK_M = 64
CONSUMERS = gl.constexpr(2)  # warpgroups of BLOCK_M query rows per program
CONFIGS = {128: dict(BLOCK_N=128, STAGES=2)}
MAXNREG, CONSUMER_REGS, PRODUCER_REGS = 168, 240, 24


@gluon.jit
def _tile_offsets(stride_b, stride_h, stride_m, b, h):
    """(row, column) of element (b, h, 0, 0) in the 2-D view of rows of stride_m."""
    start = b * stride_b + h * stride_h
    return (start // stride_m).to(gl.int32), (start % stride_m).to(gl.int32)


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_bars, k_ready, k_empty, v_ready, v_empty,
              q_row, q_col, k_row, k_col, v_row, v_col, start_m, N_K,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    for wg in gl.static_range(CONSUMERS):
        mbarrier.expect(q_bars.index(wg), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row + start_m + wg * BLOCK_M, q_col], q_bars.index(wg),
                                        q_smem.index(wg))
    for j in range(gl.cdiv(N_K, BLOCK_N)):
        slot = j % STAGES
        phase = (j // STAGES) & 1
        # A fresh mbarrier counts as having completed the phase before phase 0: the first
        # pass over the ring does not wait.
        mbarrier.wait(k_empty.index(slot), phase ^ 1)
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [k_row + j * BLOCK_N, k_col], k_ready.index(slot), k_ring.index(slot))
        mbarrier.wait(v_empty.index(slot), phase ^ 1)
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [v_row + j * BLOCK_N, v_col], v_ready.index(slot), v_ring.index(slot))


@gluon.jit
def _take_turn(turns, WG: gl.constexpr, round, PINGPONG: gl.constexpr):
    # The two consumers issue their products in turn: round r of warpgroup 1 follows round r
    # of warpgroup 0, and round r of warpgroup 0 follows round r - 1 of warpgroup 1 (round 0
    # does not wait: a fresh barrier's phase before phase 0 counts as complete). One arrival
    # per round on the other warpgroup's barrier.
    if PINGPONG:
        if WG == 0:
            mbarrier.wait(turns.index(0), (round & 1) ^ 1)
        else:
            mbarrier.wait(turns.index(WG), round & 1)


@gluon.jit
def _pass_turn(turns, WG: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turns.index(1 - WG), count=1)


@gluon.jit
def _softmax(s, m_i, l_i, start_n, N_K, qk_scale, MASK: gl.constexpr):
    """Online softmax of one score tile (raw Q K^T, qk_scale > 0 folded into exp2's FFMA):
    (P, the new running max, the new row sum, the rescale factor of earlier tiles)."""
    if MASK:
        cols = start_n + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, s.type.layout))
        s = gl.where(cols[None, :] < N_K, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, m_new, l_i, alpha


@gluon.jit
def _step(j, acc, p, m_i, l_i, q, k_ring, v_ring, k_ready, k_empty, v_ready, v_empty, turns, N_K, qk_scale,
          WG: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
          PINGPONG: gl.constexpr, MASK: gl.constexpr,
          s_layout: gl.constexpr, o_layout: gl.constexpr, p_layout: gl.constexpr):
    """Key tile j >= 1: S_j = Q K_j^T and O += P_{j-1} V_{j-1} issued together; the softmax
    of S_j while the P V product computes; then O rescaled by the new max."""
    slot = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
    _take_turn(turns, WG, j, PINGPONG)
    s_tok = warpgroup_mma(q, k_ring.index(slot).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
    o_tok = warpgroup_mma(p, v_ring.index(prev), acc, is_async=True)
    _pass_turn(turns, WG, PINGPONG)
    s = warpgroup_mma_wait(1, deps=(s_tok,))
    mbarrier.arrive(k_empty.index(slot), count=1)
    p_new, m_i, l_i, alpha = _softmax(s, m_i, l_i, j * BLOCK_N, N_K, qk_scale, MASK)
    acc, p = warpgroup_mma_wait(0, deps=(o_tok, p))
    mbarrier.arrive(v_empty.index(prev), count=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    p = gl.convert_layout(p_new.to(v_ring.dtype), p_layout)
    return acc, p, m_i, l_i


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_ring, v_ring, q_bars, k_ready, k_empty, v_ready, v_empty, turns,
              O, LSE, stride_ob, stride_oh, stride_om, b, h, bh, start_m, N_Q, N_K, qk_scale,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr):
    num_warps: gl.constexpr = 4
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

    q = q_smem.index(WG)
    mbarrier.wait(q_bars.index(WG), 0)
    n_tiles = gl.cdiv(N_K, BLOCK_N)

    # Tile 0 (masked: it may be the only one).
    mbarrier.wait(k_ready.index(0), 0)
    _take_turn(turns, WG, 0, PINGPONG)
    s_tok = warpgroup_mma(q, k_ring.index(0).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
    _pass_turn(turns, WG, PINGPONG)
    s = warpgroup_mma_wait(0, deps=(s_tok,))
    mbarrier.arrive(k_empty.index(0), count=1)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
    p, m_i, l_i, alpha = _softmax(s, m_i, l_i, 0, N_K, qk_scale, True)
    p = gl.convert_layout(p.to(v_ring.dtype), p_layout)
    acc = gl.zeros([BLOCK_M, D], gl.float32, o_layout)

    # Tiles 1 .. n - 2 unmasked, the last (from 1) masked.
    for j in range(1, n_tiles - 1):
        acc, p, m_i, l_i = _step(j, acc, p, m_i, l_i, q, k_ring, v_ring, k_ready, k_empty, v_ready, v_empty, turns,
                                 N_K, qk_scale, WG, BLOCK_M, BLOCK_N, STAGES, PINGPONG, False,
                                 s_layout, o_layout, p_layout)
    if n_tiles > 1:
        acc, p, m_i, l_i = _step(n_tiles - 1, acc, p, m_i, l_i, q, k_ring, v_ring, k_ready, k_empty, v_ready, v_empty,
                                 turns, N_K, qk_scale, WG, BLOCK_M, BLOCK_N, STAGES, PINGPONG, True,
                                 s_layout, o_layout, p_layout)

    # The last tile's P V.
    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    _take_turn(turns, WG, n_tiles, PINGPONG)
    o_tok = warpgroup_mma(p, v_ring.index(last), acc, is_async=True)
    _pass_turn(turns, WG, PINGPONG)
    acc, p = warpgroup_mma_wait(0, deps=(o_tok, p))
    mbarrier.arrive(v_empty.index(last), count=1)

    # Epilogue: O = acc / l in O's dtype, lse2 = m + log2(l); rows past N_Q are not written.
    rows = start_m + WG * BLOCK_M + gl.arange(0, BLOCK_M, layout=row_layout)
    gl.store(LSE + bh * N_Q + rows, m_i + gl.log2(l_i), mask=rows < N_Q)
    out = (acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]).to(O.dtype.element_ty)
    io: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [num_warps, 1], [1, 0])
    out = gl.convert_layout(out, io)
    o_rows = start_m + WG * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, io))
    o_cols = gl.arange(0, D, layout=gl.SliceLayout(0, io))
    O += b * stride_ob + h * stride_oh
    gl.store(O + o_rows[:, None] * stride_om + o_cols[None, :], out, mask=o_rows[:, None] < N_Q)


@gluon.jit(do_not_specialize=["N_Q", "N_K", "N_COUNTERS"])
def hopper_attention_kernel(q_desc, k_desc, v_desc, O, LSE, COUNTERS, N_COUNTERS,
                            stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                            stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                            H, N_Q, N_K, qk_scale,
                            BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
                            STAGES: gl.constexpr, PINGPONG: gl.constexpr, HAS_COUNTERS: gl.constexpr,
                            CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    """Query rows [pid_m * 2 * BLOCK_M, +2 * BLOCK_M) of head bh; launched with num_warps=4
    (the default partition: consumer 0) plus a 4-warp worker (consumer 1) and a 1-warp
    worker (the producer). With COUNTERS, program (0, 0) zeroes the call's N_COUNTERS int32
    counters first, as the Triton forward does."""
    pid_m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * (CONSUMERS * BLOCK_M)
    if HAS_COUNTERS:
        if (pid_m == 0) & (bh == 0):
            zeros_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
            offs = gl.arange(0, 128, layout=zeros_layout)
            for start in range(0, N_COUNTERS, 128):
                gl.store(COUNTERS + start + offs, gl.zeros([128], gl.int32, zeros_layout),
                         mask=start + offs < N_COUNTERS)
    q_row, q_col = _tile_offsets(stride_qb, stride_qh, stride_qm, b.to(gl.int64), h.to(gl.int64))
    k_row, k_col = _tile_offsets(stride_kb, stride_kh, stride_kn, b.to(gl.int64), h.to(gl.int64))
    v_row, v_col = _tile_offsets(stride_vb, stride_vh, stride_vn, b.to(gl.int64), h.to(gl.int64))

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS, BLOCK_M, D], q_desc.layout)
    k_ring = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, D], k_desc.layout)
    v_ring = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, D], v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        # Freed once by each consumer warpgroup.
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    # The partitions' argument tuples are written inline: a tuple assigned to a variable
    # first turns its constexprs into tensors.
    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    gl.warp_specialize([
        (_consumer, (WG0, q_smem, k_ring, v_ring, q_bars, k_ready, k_empty, v_ready, v_empty, turns,
                     O, LSE, stride_ob, stride_oh, stride_om, b, h, bh, start_m, N_Q, N_K, qk_scale,
                     BLOCK_M, BLOCK_N, D, STAGES, PINGPONG)),
        (_consumer, (WG1, q_smem, k_ring, v_ring, q_bars, k_ready, k_empty, v_ready, v_empty, turns,
                     O, LSE, stride_ob, stride_oh, stride_om, b, h, bh, start_m, N_Q, N_K, qk_scale,
                     BLOCK_M, BLOCK_N, D, STAGES, PINGPONG)),
        (_producer, (q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_bars, k_ready, k_empty, v_ready, v_empty,
                     q_row, q_col, k_row, k_col, v_row, v_col, start_m, N_K, BLOCK_M, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
