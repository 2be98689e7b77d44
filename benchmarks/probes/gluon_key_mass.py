"""Candidate key-mass pass in Gluon (sm_90): the next query tile's K Q^T in flight on the
tensor cores while the current tile's exponentials run (not shipped; probe13 times it).

Triton 3.6 waits on every wgmma whose result feeds elementwise work in the same loop, so
the shipped pass (kernels/key_mass.py) runs its products and its exponentials back to back
inside each program (kernels/NOTES.md: products alone 0.28 ms, the pass 0.38 ms at SD3).
Here the loop is written out by hand, two score buffers in turn:

    wait S_i;  issue the load of tile i+STAGES-1;  issue S_{i+1} = K Q_{i+1}^T (async)
    P_i = exp2(S_i * scale - lse_i);  row sums of P_i      (while S_{i+1} computes)

A program owns BLOCK_N keys (the MMA's M; 64 per warpgroup, or 128 in two MMAs) of one
(batch, head) and walks all query tiles of BLOCK_M rows (the MMA's N). Q tiles and their lse stream into a
ring of STAGES shared-memory buffers with cp.async (masked: rows past N_Q load zeros and
lse +inf, so they add exp2(-inf) = 0). The loop body covers two tiles so that each score
buffer keeps its registers; an odd tile count gets one empty tile at the end.
"""

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

# Triton 3.8 names the CTA barrier gl.barrier; earlier versions gl.thread_barrier.
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@gluon.jit
def _load_tile(Q, LSE, q_ring, lse_ring, slot, start_m, N_Q, stride_qm,
               BLOCK_M: gl.constexpr, D: gl.constexpr, q_load: gl.constexpr, lse_load: gl.constexpr):
    rows = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, q_load))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, q_load))
    async_copy.async_copy_global_to_shared(
        q_ring.index(slot), Q + rows[:, None] * stride_qm + cols[None, :], mask=rows[:, None] < N_Q)
    lse_rows = start_m + gl.arange(0, BLOCK_M, layout=lse_load)
    async_copy.async_copy_global_to_shared(lse_ring.index(slot), LSE + lse_rows, mask=lse_rows < N_Q)
    async_copy.commit_group()


@gluon.jit
def _wait_tiles(outstanding: gl.constexpr):
    # All but the last `outstanding` load groups are in shared memory, for every thread
    # (the barrier also orders every warp's reads of the slot reloaded next), and visible
    # to the tensor cores' async proxy.
    async_copy.wait_group(outstanding)
    _cta_barrier()
    fence_async_shared()


@gluon.jit
def _row_sums(s, lse_ring, slot, start_m, N_Q, qk_scale, s_layout: gl.constexpr):
    lse = lse_ring.index(slot).load(gl.SliceLayout(0, s_layout))
    if start_m + s.shape[1] > N_Q:
        # Rows past N_Q were copied as zeros; an lse of +inf gives them probability 0.
        cols = start_m + gl.arange(0, s.shape[1], layout=gl.SliceLayout(0, s_layout))
        lse = gl.where(cols < N_Q, lse, float("inf"))
    return gl.sum(gl.exp2(s * qk_scale - lse[None, :]), axis=1)


@gluon.jit
def gluon_key_mass_kernel(Q, K, LSE, MASS, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          H, N_Q, N_K, qk_scale, inv_count,
                          D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                          num_warps: gl.constexpr):
    gl.static_assert(STAGES >= 3)
    gl.static_assert(BLOCK_N % (16 * num_warps) == 0)  # whole m64 rows per warpgroup
    pid_n = gl.program_id(0)
    bh = gl.program_id(1).to(gl.int64)
    Q += (bh // H) * stride_qb + (bh % H) * stride_qh
    K += (bh // H) * stride_kb + (bh % H) * stride_kh
    LSE += bh * N_Q

    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    io: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // D, D // 8], [num_warps, 1], [1, 0])
    lse_io: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])
    operand: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

    # The key tile, once: registers -> shared memory (the MMA's A operand).
    keys = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, io))
    dims = gl.arange(0, D, layout=gl.SliceLayout(0, io))
    b_k = gl.load(K + keys[:, None] * stride_kn + dims[None, :], mask=keys[:, None] < N_K, other=0.0)
    k_smem = gl.allocate_shared_memory(K.dtype.element_ty, [BLOCK_N, D], operand, b_k)
    q_ring = gl.allocate_shared_memory(Q.dtype.element_ty, [STAGES, BLOCK_M, D], operand)
    lse_ring = gl.allocate_shared_memory(gl.float32, [STAGES, BLOCK_M], flat)

    # Tile t lives in slot t % STAGES. Before the load of tile j + STAGES - 1 is issued
    # (while tile j's scores are consumed), tiles up to j + STAGES - 2 are in flight and
    # tile j + 1 must have landed: STAGES - 3 groups may stay outstanding.
    for t in gl.static_range(STAGES - 1):
        _load_tile(Q, LSE, q_ring, lse_ring, t, t * BLOCK_M, N_Q, stride_qm, BLOCK_M, D, io, lse_io)
    _wait_tiles(STAGES - 2)

    s_a = warpgroup_mma(k_smem, q_ring.index(0).permute((1, 0)), gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout),
                        use_acc=False, is_async=True)
    buf_b = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    sums = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, s_layout))
    for pair in range(gl.cdiv(gl.cdiv(N_Q, BLOCK_M), 2)):
        i = 2 * pair
        # Tile i (buffer a): exponentials while tile i + 1 (buffer b) computes.
        a = warpgroup_mma_wait(0, deps=(s_a,))
        _wait_tiles(STAGES - 3)
        _load_tile(Q, LSE, q_ring, lse_ring, (i + STAGES - 1) % STAGES, (i + STAGES - 1) * BLOCK_M, N_Q,
                   stride_qm, BLOCK_M, D, io, lse_io)
        s_b = warpgroup_mma(k_smem, q_ring.index((i + 1) % STAGES).permute((1, 0)), buf_b,
                            use_acc=False, is_async=True)
        sums += _row_sums(a, lse_ring, i % STAGES, i * BLOCK_M, N_Q, qk_scale, s_layout)
        # Tile i + 1 (buffer b): exponentials while tile i + 2 (buffer a) computes.
        b = warpgroup_mma_wait(0, deps=(s_b,))
        _wait_tiles(STAGES - 3)
        _load_tile(Q, LSE, q_ring, lse_ring, (i + STAGES) % STAGES, (i + STAGES) * BLOCK_M, N_Q,
                   stride_qm, BLOCK_M, D, io, lse_io)
        s_a = warpgroup_mma(k_smem, q_ring.index((i + 2) % STAGES).permute((1, 0)), a,
                            use_acc=False, is_async=True)
        sums += _row_sums(b, lse_ring, (i + 1) % STAGES, (i + 1) * BLOCK_M, N_Q, qk_scale, s_layout)
        buf_b = b
    warpgroup_mma_wait(0, deps=(s_a,))
    async_copy.wait_group(0)
    out_keys = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, s_layout))
    gl.store(MASS + bh * N_K + out_keys, sums * inv_count, mask=out_keys < N_K)


def key_mass(q, k, lse, scale, block_m=64, stages=4, block_n=64, num_warps=4):
    """Mean over all query rows of P, (B, H, Nk) float32; q, k (B, H, N, D) with unit stride
    along D; lse (B, H, Nq) in log2 units, as launch.attention returns it."""
    import math

    import torch
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    mass = torch.empty(batch, heads, n_k, device=q.device, dtype=torch.float32)
    gluon_key_mass_kernel[(triton.cdiv(n_k, block_n), batch * heads)](
        q, k, lse, mass, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        heads, n_q, n_k, scale / math.log(2), 1.0 / n_q,
        D=dim, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages, num_warps=num_warps)
    return mass

