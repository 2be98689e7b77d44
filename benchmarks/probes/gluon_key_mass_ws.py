"""Candidate warp-specialised key-mass pass in Gluon for Hopper (sm_90), issue 19: not shipped.
probe23 checks it against ``sinkattn.launch.key_mass`` and times both on the H200: with the
lse2 loads one pair ahead (run 2) it ties the Triton pass at Flux (0.315 against 0.313 ms)
and loses at SD3-medium (0.470 against 0.386 ms); ping-pong between the consumers (run 3)
and the K tile held in registers (run 4) changed neither.

Session 5's Gluon pass (``gluon_key_mass.py``: one partition, cp.async ring, the next
tile's product in flight) was no faster than the Triton pass. Session 11's Gluon forward
(kernels/attention_hopper.py) differs from it in what this one copies: a TMA producer warp
and two consumer warpgroups with their registers moved to them (setmaxnreg), which took the
Flux forward from 1.27x to 1.01x cuDNN. Whether the same structure moves the key-mass pass
(1.08x its exponentials-plus-products time at SD3, 1.17x at Flux, session 5) is what
probe23 measures.

What it computes is the key-mass kernel's plain part (kernels/key_mass.py, one query share,
no selection): MASS (B*H, N_K) float32, the mean over query rows [M_START, M_STOP) of
P = exp2(Q K^T * qk_scale - lse2), from the forward's lse2.

One program owns 2 x BLOCK_N keys of one (batch, head), in three partitions:

- a producer warp: TMA loads of the two K tiles once, then of the query tiles of BLOCK_M
  rows of the program's range into a ring of STAGES slots;
- two consumer warpgroups of BLOCK_N = 64 keys each (one wgmma M): per query tile j,
  S_j^T = K Q_j^T (async wgmma, K from shared memory); tiles are taken in pairs, both
  products issued together, so that the first tile's exponentials run while the second's
  product computes (``_consumer``); P^T is added elementwise into a [BLOCK_N, BLOCK_M]
  accumulator, reduced once at the end.

The row lse2 of each query tile is loaded by the consumers from global memory, one pair of
tiles ahead (+inf past M_STOP, so those rows add exp2(-inf) = 0). Q tile rows past the
head's end read the tensor's next rows or TMA's zero fill (``launch._tma_layout``), finite,
and weigh nothing.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from sinkattn.kernels.attention_hopper import _pass_turn, _take_turn, _tile_offsets

BLOCK_N = 64
# BLOCK_M 64: two score tiles and the accumulator, [64, 64] float32 each, take 96 registers;
# at 128 (192) they spilled under the 168-register cap ptxas compiles every partition with
# (ptxas -v, triton 3.8: 176 bytes of spill stores).
CONFIGS = {64: dict(BLOCK_M=64, STAGES=4), 128: dict(BLOCK_M=64, STAGES=4)}
MAXNREG, CONSUMER_REGS, PRODUCER_REGS = 168, 240, 24


@gluon.jit
def _producer(q_desc, k_desc, k_smem, q_ring, k_bar, q_ready, q_empty, q_row, q_col, k_row, k_col, start_n,
              m_lo, m_hi, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    mbarrier.expect(k_bar, 2 * k_desc.block_type.nbytes)
    for wg in gl.static_range(2):
        tma.async_copy_global_to_shared(k_desc, [k_row + start_n + wg * BLOCK_N, k_col], k_bar, k_smem.index(wg))
    # An even number of query tiles (the consumers take them in pairs): a last tile past
    # m_hi weighs nothing (its lse2 reads +inf).
    for j in range(2 * gl.cdiv(m_hi - m_lo, 2 * BLOCK_M)):
        slot = j % STAGES
        # A fresh mbarrier counts as having completed the phase before phase 0.
        mbarrier.wait(q_empty.index(slot), ((j // STAGES) & 1) ^ 1)
        mbarrier.expect(q_ready.index(slot), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row + m_lo + j * BLOCK_M, q_col], q_ready.index(slot),
                                        q_ring.index(slot))


@gluon.jit
def _issue(k_tile, q_ring, q_ready, j, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
           s_layout: gl.constexpr):
    """S_j^T = K Q_j^T, issued async once query tile j is in its slot."""
    slot = j % STAGES
    mbarrier.wait(q_ready.index(slot), (j // STAGES) & 1)
    return warpgroup_mma(k_tile, q_ring.index(slot).permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout),
                         use_acc=False, is_async=True)


@gluon.jit
def _load_lse(LSE, j, m_lo, m_hi, BLOCK_M: gl.constexpr, s_layout: gl.constexpr):
    """lse2 of query tile j's rows, +inf past m_hi (those rows add exp2(-inf) = 0)."""
    cols = m_lo + j * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
    return gl.load(LSE + cols, mask=cols < m_hi, other=float("inf"))


@gluon.jit
def _take(acc, s, lse, q_empty, j, qk_scale, STAGES: gl.constexpr):
    """Frees tile j's slot and adds its P^T = exp2(S^T * qk_scale - lse2)."""
    mbarrier.arrive(q_empty.index(j % STAGES), count=1)
    return acc + gl.exp2(s * qk_scale - lse[None, :])


@gluon.jit
def _consumer(WG: gl.constexpr, k_smem, q_ring, k_bar, q_ready, q_empty, turns, MASS, LSE, bh, start_n, N_K, m_lo,
              m_hi, qk_scale, inv_count, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              PINGPONG: gl.constexpr, K_IN_REGISTERS: gl.constexpr):
    """Query tiles in pairs (a, b): both products issued, a's exponentials while b's product
    computes, then b's (while the other warpgroup's products use the tensor cores). A product
    left in flight across iterations (issued in one, waited for in the next) made ptxas
    serialise every wgmma (C7514, triton 3.8): each iteration waits for its own.

    Both warpgroups read the same query tiles, so without an order they issue their products
    together and take their exponentials together (probe23 run 2: no faster than the Triton
    pass). With PINGPONG they issue in turn (the forward's ``_take_turn``/``_pass_turn``, one
    round per pair), so one warpgroup's products run during the other's exponentials; probe23
    run 3 measured no gain (two CTAs share an SM: four warpgroups interleave anyway)."""
    num_warps: gl.constexpr = 4
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    mbarrier.wait(k_bar, 0)
    if K_IN_REGISTERS:
        # The program's K tile is every product's left operand: held in registers (32 a thread)
        # it is read from shared memory once instead of by every wgmma, which with both
        # operands in shared memory at N = 64 reads as many bytes as it computes FLOPs at peak.
        k_tile = k_smem.index(WG).load(gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2))
    else:
        k_tile = k_smem.index(WG)
    n_pairs = gl.cdiv(m_hi - m_lo, 2 * BLOCK_M)
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    # Each pair's lse2 is loaded one pair ahead: loaded next to its use, its latency from L2
    # was exposed in every iteration (probe23 run 1: 1.25x the Triton pass at Flux).
    lse_a = _load_lse(LSE, 0, m_lo, m_hi, BLOCK_M, s_layout)
    lse_b = _load_lse(LSE, 1, m_lo, m_hi, BLOCK_M, s_layout)
    for p in range(n_pairs):
        j = 2 * p
        _take_turn(turns, WG, p, PINGPONG)
        tok_a = _issue(k_tile, q_ring, q_ready, j, BLOCK_M, BLOCK_N, STAGES, s_layout)
        tok_b = _issue(k_tile, q_ring, q_ready, j + 1, BLOCK_M, BLOCK_N, STAGES, s_layout)
        _pass_turn(turns, WG, PINGPONG)
        next_a = _load_lse(LSE, j + 2, m_lo, m_hi, BLOCK_M, s_layout)
        next_b = _load_lse(LSE, j + 3, m_lo, m_hi, BLOCK_M, s_layout)
        s_a = warpgroup_mma_wait(1, deps=(tok_a,))
        acc = _take(acc, s_a, lse_a, q_empty, j, qk_scale, STAGES)
        s_b = warpgroup_mma_wait(0, deps=(tok_b,))
        acc = _take(acc, s_b, lse_b, q_empty, j + 1, qk_scale, STAGES)
        lse_a = next_a
        lse_b = next_b
    keys = start_n + WG * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, s_layout))
    gl.store(MASS + bh * N_K + keys, gl.sum(acc, axis=1) * inv_count, mask=keys < N_K)


@gluon.jit(do_not_specialize=["N_Q", "N_K", "M_START", "M_STOP"])
def gluon_key_mass_kernel(q_desc, k_desc, LSE, MASS, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          H, N_Q, N_K, M_START, M_STOP, qk_scale, inv_count,
                          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                          PINGPONG: gl.constexpr, K_IN_REGISTERS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                          PRODUCER_REGS: gl.constexpr):
    """MASS (B*H, N_K) for keys [pid_n * 2 * BLOCK_N, +2 * BLOCK_N) of head bh, over query
    rows [M_START, M_STOP) (at least one); num_warps=4 (consumer 0) plus a 4-warp worker
    (consumer 1) and a 1-warp worker (the producer)."""
    pid_n = gl.program_id(0)
    bh = gl.program_id(1).to(gl.int64)
    b = bh // H
    h = bh % H
    start_n = pid_n * (2 * BLOCK_N)
    q_row, q_col = _tile_offsets(stride_qb, stride_qh, stride_qm, b, h)
    k_row, k_col = _tile_offsets(stride_kb, stride_kh, stride_kn, b, h)

    k_smem = gl.allocate_shared_memory(k_desc.dtype, [2, BLOCK_N, D], k_desc.layout)
    q_ring = gl.allocate_shared_memory(q_desc.dtype, [STAGES, BLOCK_M, D], q_desc.layout)
    k_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(k_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)  # freed once by each consumer warpgroup

    LSE += bh * N_Q
    WG0: gl.constexpr = 0
    WG1: gl.constexpr = 1
    gl.warp_specialize([
        (_consumer, (WG0, k_smem, q_ring, k_bar, q_ready, q_empty, turns, MASS, LSE, bh, start_n, N_K, M_START,
                     M_STOP, qk_scale, inv_count, BLOCK_M, BLOCK_N, STAGES, PINGPONG, K_IN_REGISTERS)),
        (_consumer, (WG1, k_smem, q_ring, k_bar, q_ready, q_empty, turns, MASS, LSE, bh, start_n, N_K, M_START,
                     M_STOP, qk_scale, inv_count, BLOCK_M, BLOCK_N, STAGES, PINGPONG, K_IN_REGISTERS)),
        (_producer, (q_desc, k_desc, k_smem, q_ring, k_bar, q_ready, q_empty, q_row, q_col, k_row, k_col, start_n,
                     M_START, M_STOP, BLOCK_M, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def prepare(q, k, lse, scale, rows, block_m=None, stages=None, pingpong=False, k_in_registers=False):
    """The launch of the pass on q (B, H, Nq, D), k (B, H, Nk, D) (``launch._tma_layout``),
    lse (B, H, Nq) float32 from the forward, query rows ``rows``: returns (launch, mass), each
    launch() writing mass (B, H, Nk) float32 as ``launch.key_mass(q, k, lse, scale, rows)``
    does with one query share."""
    import math

    import torch

    from sinkattn import launch as sinkattn_launch

    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    config = CONFIGS[dim]
    block_m = block_m or config["BLOCK_M"]
    stages = stages or config["STAGES"]
    assert rows[1] > rows[0] and lse.is_contiguous()
    mass = torch.empty(batch, heads, n_k, device=q.device, dtype=torch.float32)
    q_desc = sinkattn_launch._tma_descriptor(q, block_m)
    k_desc = sinkattn_launch._tma_descriptor(k, BLOCK_N)
    grid = ((n_k + 2 * BLOCK_N - 1) // (2 * BLOCK_N), batch * heads)
    args = (q_desc, k_desc, lse, mass, *q.stride()[:3], *k.stride()[:3], heads, n_q, n_k, rows[0], rows[1],
            scale / math.log(2), 1.0 / (rows[1] - rows[0]))
    meta = dict(BLOCK_M=block_m, BLOCK_N=BLOCK_N, D=dim, STAGES=stages, PINGPONG=pingpong,
                K_IN_REGISTERS=k_in_registers, CONSUMER_REGS=CONSUMER_REGS, PRODUCER_REGS=PRODUCER_REGS,
                num_warps=4, maxnreg=MAXNREG)

    def run():
        gluon_key_mass_kernel[grid](*args, **meta)
    return run, mass
