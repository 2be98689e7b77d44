"""Candidate persistent variant of the Gluon forward (kernels/attention_hopper.py) for issue 19,
not shipped. Session 11 wrote it with two consumers; probe24 (session 12, c658d63) measured
it: at Flux 1.086-1.088x cuDNN against the shipped kernel's 1.043x (slower), at SD3-medium
(D64, forced) 0.976x against 1.027x (faster). Session 12 gave it CONSUMERS 2 or 3 warpgroups
(192 query rows per tile with three, the variant session 11 measured at 0.979x SD3-medium,
0.940x SD3.5-large and 1.25x SDXL self, the last from its 3.33-wave tail, which a
persistent grid removes): probe25 measures that at head dim 64.

Why: the shipped kernel launches one program per 128 query rows of a head, one CTA per SM
(its shared memory and registers fill one), so every program pays its start (the Q loads,
filling the K/V ring) and its end (the epilogue's stores) with the tensor cores idle.
cuDNN's forward is persistent (132 CTAs of 3 warpgroups, probe19). Here the grid is the
number of SMs and each program walks the (row block, head) tiles pid, pid + grid, ...: the
producer starts loading the next tile's K and V tiles into the ring while the consumers
still finish the current one, and the next tile's Q as soon as a consumer's last product of
the current tile is done (``q_empty``), which overlaps the epilogue. Prediction (NOTES,
session 11): 3-6% at Flux, which would take it from 1.013x to ~0.96x cuDNN.

The per-tile schedule is the shipped kernel's (its ``_softmax``, ``_take_turn``,
``_pass_turn`` and ``_tile_offsets`` are imported), with the ring position and the turn
counted across tiles: key tile j of the program's it-th tile uses ring position
it * n_kv + j, and turn round it * (n_kv + 1) + j. With three consumers the turn goes round
(``_pass_turn_of``). Plain forward only (no counters).
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from sinkattn.kernels.attention_hopper import BLOCK_M, _softmax, _take_turn, _tile_offsets

ROWS = gl.constexpr(BLOCK_M)  # the rows of one consumer warpgroup, inside the kernels
# Per consumer count: the launch's register cap and setmaxnreg's split (session 11's values).
REGISTERS = {2: dict(MAXNREG=168, CONSUMER_REGS=240, PRODUCER_REGS=24),
             3: dict(MAXNREG=128, CONSUMER_REGS=160, PRODUCER_REGS=24)}


@gluon.jit
def _pass_turn_of(turns, WG: gl.constexpr, CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turns.index((WG + 1) % CONSUMERS), count=1)


@gluon.jit
def _tile(t, n_m, H, CONSUMERS: gl.constexpr):
    """(start row, b, h, bh) of tile t: row block t % n_m of head t // n_m."""
    bh = (t // n_m).to(gl.int64)
    return (t % n_m) * (CONSUMERS * ROWS), bh // H, bh % H, bh


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty,
              stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
              H, N_K, n_m, n_total, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CONSUMERS: gl.constexpr):
    pid = gl.program_id(0)
    grid = gl.num_programs(0)
    n_kv = gl.cdiv(N_K, BLOCK_N)
    for t in range(pid, n_total, grid):
        it = (t - pid) // grid
        start_m, b, h, bh = _tile(t, n_m, H, CONSUMERS)
        q_row, q_col = _tile_offsets(stride_qb, stride_qh, stride_qm, b, h)
        k_row, k_col = _tile_offsets(stride_kb, stride_kh, stride_kn, b, h)
        v_row, v_col = _tile_offsets(stride_vb, stride_vh, stride_vn, b, h)
        for wg in gl.static_range(CONSUMERS):
            # The consumer's last product of the previous tile is done with its Q tile.
            mbarrier.wait(q_empty.index(wg), (it & 1) ^ 1)
            mbarrier.expect(q_bars.index(wg), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [q_row + start_m + wg * ROWS, q_col], q_bars.index(wg),
                                            q_smem.index(wg))
        for j in range(n_kv):
            c = it * n_kv + j
            slot = c % STAGES
            phase = (c // STAGES) & 1
            mbarrier.wait(k_empty.index(slot), phase ^ 1)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [k_row + j * BLOCK_N, k_col], k_ready.index(slot),
                                            k_ring.index(slot))
            mbarrier.wait(v_empty.index(slot), phase ^ 1)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [v_row + j * BLOCK_N, v_col], v_ready.index(slot),
                                            v_ring.index(slot))


@gluon.jit
def _step(c, j, rnd, acc, p, m_i, l_i, q, k_ring, v_ring, k_ready, k_empty, v_ready, v_empty, turns, N_K, qk_scale,
          WG: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CONSUMERS: gl.constexpr,
          PINGPONG: gl.constexpr, MASK: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr,
          p_layout: gl.constexpr):
    """The shipped ``_step`` for key tile j >= 1 of a tile, at ring position c, turn round rnd."""
    slot = c % STAGES
    prev = (c - 1) % STAGES
    mbarrier.wait(k_ready.index(slot), (c // STAGES) & 1)
    _take_turn(turns, WG, rnd, PINGPONG)
    s_tok = warpgroup_mma(q, k_ring.index(slot).permute((1, 0)), gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), ((c - 1) // STAGES) & 1)
    o_tok = warpgroup_mma(p, v_ring.index(prev), acc, is_async=True)
    _pass_turn_of(turns, WG, CONSUMERS, PINGPONG)
    s = warpgroup_mma_wait(1, deps=(s_tok,))
    mbarrier.arrive(k_empty.index(slot), count=1)
    p_new, m_i, l_i, alpha = _softmax(s, m_i, l_i, j * BLOCK_N, N_K, qk_scale, MASK)
    acc, p = warpgroup_mma_wait(0, deps=(o_tok, p))
    mbarrier.arrive(v_empty.index(prev), count=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    p = gl.convert_layout(p_new.to(v_ring.dtype), p_layout)
    return acc, p, m_i, l_i


@gluon.jit
def _consumer(WG: gl.constexpr, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty, turns,
              O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, n_m, n_total, qk_scale,
              BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr, CONSUMERS: gl.constexpr,
              PINGPONG: gl.constexpr):
    num_warps: gl.constexpr = 4
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    io: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [num_warps, 1], [1, 0])
    pid = gl.program_id(0)
    grid = gl.num_programs(0)
    n_kv = gl.cdiv(N_K, BLOCK_N)
    q = q_smem.index(WG)
    for t in range(pid, n_total, grid):
        it = (t - pid) // grid
        start_m, b, h, bh = _tile(t, n_m, H, CONSUMERS)
        c0 = it * n_kv
        r0 = it * (n_kv + 1)
        mbarrier.wait(q_bars.index(WG), it & 1)

        # Key tile 0 (masked: it may be the only one).
        mbarrier.wait(k_ready.index(c0 % STAGES), (c0 // STAGES) & 1)
        _take_turn(turns, WG, r0, PINGPONG)
        s_tok = warpgroup_mma(q, k_ring.index(c0 % STAGES).permute((1, 0)),
                              gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout), use_acc=False, is_async=True)
        _pass_turn_of(turns, WG, CONSUMERS, PINGPONG)
        s = warpgroup_mma_wait(0, deps=(s_tok,))
        mbarrier.arrive(k_empty.index(c0 % STAGES), count=1)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, row_layout)
        l_i = gl.zeros([ROWS], gl.float32, row_layout)
        p, m_i, l_i, alpha = _softmax(s, m_i, l_i, 0, N_K, qk_scale, True)
        p = gl.convert_layout(p.to(v_ring.dtype), p_layout)
        acc = gl.zeros([ROWS, D], gl.float32, o_layout)
        for j in range(1, n_kv - 1):
            acc, p, m_i, l_i = _step(c0 + j, j, r0 + j, acc, p, m_i, l_i, q, k_ring, v_ring, k_ready, k_empty,
                                     v_ready, v_empty, turns, N_K, qk_scale, WG, BLOCK_N, STAGES, CONSUMERS,
                                     PINGPONG, False, s_layout, o_layout, p_layout)
        if n_kv > 1:
            acc, p, m_i, l_i = _step(c0 + n_kv - 1, n_kv - 1, r0 + n_kv - 1, acc, p, m_i, l_i, q, k_ring, v_ring,
                                     k_ready, k_empty, v_ready, v_empty, turns, N_K, qk_scale, WG, BLOCK_N, STAGES,
                                     CONSUMERS, PINGPONG, True, s_layout, o_layout, p_layout)
        # Q is no longer read: the producer may load the next tile's while this one ends.
        mbarrier.arrive(q_empty.index(WG), count=1)

        # The last key tile's P V.
        last = c0 + n_kv - 1
        mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
        _take_turn(turns, WG, r0 + n_kv, PINGPONG)
        o_tok = warpgroup_mma(p, v_ring.index(last % STAGES), acc, is_async=True)
        _pass_turn_of(turns, WG, CONSUMERS, PINGPONG)
        acc, p = warpgroup_mma_wait(0, deps=(o_tok, p))
        mbarrier.arrive(v_empty.index(last % STAGES), count=1)

        # Epilogue (the shipped kernel's): O = acc / l, lse2 = m + log2(l), rows < N_Q.
        rows = start_m + WG * ROWS + gl.arange(0, ROWS, layout=row_layout)
        gl.store(LSE + bh * N_Q + rows, m_i + gl.log2(l_i), mask=rows < N_Q)
        out = (acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]).to(O.dtype.element_ty)
        out = gl.convert_layout(out, io)
        o_rows = start_m + WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, io))
        o_cols = gl.arange(0, D, layout=gl.SliceLayout(0, io))
        gl.store(O + b * stride_ob + h * stride_oh + o_rows[:, None] * stride_om + o_cols[None, :], out,
                 mask=o_rows[:, None] < N_Q)


@gluon.jit(do_not_specialize=["N_Q", "N_K", "n_m", "n_total"])
def persistent_attention_kernel(q_desc, k_desc, v_desc, O, LSE,
                                stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                                H, N_Q, N_K, n_m, n_total, qk_scale,
                                BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                                CONSUMERS: gl.constexpr, PINGPONG: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                                PRODUCER_REGS: gl.constexpr):
    """Tiles pid, pid + grid, ... of the n_total = n_m x (B*H) (row block, head) tiles."""
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS, ROWS, D], q_desc.layout)
    k_ring = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, D], k_desc.layout)
    v_ring = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, D], v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    # The partitions' argument tuples are written inline (a tuple assigned to a variable first
    # turns its constexprs into tensors): one call per consumer count.
    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    WG2: gl.constexpr = 2
    if CONSUMERS == 2:
        gl.warp_specialize([
            (_consumer, (WG0, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty, turns,
                         O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, n_m, n_total, qk_scale,
                         BLOCK_N, D, STAGES, CONSUMERS, PINGPONG)),
            (_consumer, (WG1, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty, turns,
                         O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, n_m, n_total, qk_scale,
                         BLOCK_N, D, STAGES, CONSUMERS, PINGPONG)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready,
                         v_empty, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb,
                         stride_vh, stride_vn, H, N_K, n_m, n_total, BLOCK_N, STAGES, CONSUMERS)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
    else:
        gl.warp_specialize([
            (_consumer, (WG0, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty, turns,
                         O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, n_m, n_total, qk_scale,
                         BLOCK_N, D, STAGES, CONSUMERS, PINGPONG)),
            (_consumer, (WG1, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty, turns,
                         O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, n_m, n_total, qk_scale,
                         BLOCK_N, D, STAGES, CONSUMERS, PINGPONG)),
            (_consumer, (WG2, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready, v_empty, turns,
                         O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, n_m, n_total, qk_scale,
                         BLOCK_N, D, STAGES, CONSUMERS, PINGPONG)),
            (_producer, (q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_bars, q_empty, k_ready, k_empty, v_ready,
                         v_empty, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb,
                         stride_vh, stride_vn, H, N_K, n_m, n_total, BLOCK_N, STAGES, CONSUMERS)),
        ], [4, 4, 1], [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS])


def prepare(q, k, v, scale, block_n=128, stages=2, pingpong=True, programs=None, consumers=2):
    """The launch on q, k, v (B, H, N, D; ``launch._tma_layout``; bf16/fp16) with its outputs
    and descriptors made once: returns (launch, out, lse) as ``launch.attention(q, k, v,
    scale, q.dtype)`` returns (out, lse). ``programs``: the grid (default: the SM count)."""
    import math

    import torch

    from sinkattn import launch as sinkattn_launch

    batch, heads, n_q, dim = q.shape
    out = torch.empty(batch, heads, n_q, dim, device=q.device, dtype=q.dtype)
    lse = torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32)
    n_m = (n_q + consumers * BLOCK_M - 1) // (consumers * BLOCK_M)
    n_total = n_m * batch * heads
    programs = programs or torch.cuda.get_device_properties(q.device).multi_processor_count
    descs = (sinkattn_launch._tma_descriptor(q, BLOCK_M), sinkattn_launch._tma_descriptor(k, block_n),
             sinkattn_launch._tma_descriptor(v, block_n))
    args = (*descs, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
            heads, n_q, k.shape[2], n_m, n_total, scale / math.log(2))
    registers = REGISTERS[consumers]
    meta = dict(BLOCK_N=block_n, D=dim, STAGES=stages, CONSUMERS=consumers, PINGPONG=pingpong,
                CONSUMER_REGS=registers["CONSUMER_REGS"], PRODUCER_REGS=registers["PRODUCER_REGS"], num_warps=4,
                maxnreg=registers["MAXNREG"])

    def run():
        persistent_attention_kernel[(min(programs, n_total),)](*args, **meta)
    return run, out, lse
