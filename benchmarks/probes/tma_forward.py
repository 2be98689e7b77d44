"""Session-4 probe kernel: the unintervened forward with its Q, K and V tiles loaded through
TMA tensor descriptors (one 4-D descriptor per operand over diffusers' (B, N, H, D) memory
order; out-of-range rows and keys come back as zeros, so no load masks), to compare with the
shipped pointer-load forward (kernels/attention.py). Plain attention only: O (any dtype)
and lse2, the same outputs as attention_forward_kernel without SINKS or ROW_FLAGS, with
the scale folded into the exponentials as there (positive scales only).
"""

import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile(acc, l_i, m_i, q, desc_k, desc_v, b, h, start_n, offs_n, N_K, qk_scale,
          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MASK_N: tl.constexpr):
    k = desc_k.load([b, start_n, h, 0]).reshape(BLOCK_N, BLOCK_D)
    s = tl.dot(q, tl.trans(k))  # unscaled: the scale goes into the exponentials' FFMA
    if MASK_N:
        s = tl.where((start_n + offs_n)[None, :] < N_K, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = desc_v.load([b, start_n, h, 0]).reshape(BLOCK_N, BLOCK_DV)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["N_Q", "N_K"])
def tma_forward_kernel(desc_q, desc_k, desc_v, O, LSE, stride_ob, stride_oh, stride_om, H, N_Q, N_K, qk_scale,
                       DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = (bh // H).to(tl.int32)
    h = (bh % H).to(tl.int32)
    start_m = pid_m * BLOCK_M
    q = desc_q.load([b, start_m, h, 0]).reshape(BLOCK_M, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    n_full = (N_K // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, desc_k, desc_v, b, h, start_n, offs_n, N_K, qk_scale,
                              BLOCK_N, BLOCK_D, BLOCK_DV, False)
    if n_full < N_K:
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, desc_k, desc_v, b, h, n_full, offs_n, N_K, qk_scale,
                              BLOCK_N, BLOCK_D, BLOCK_DV, True)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < N_Q
    O += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    tl.store(LSE + bh * N_Q + offs_m, m_i + tl.math.log2(l_i), mask=mask_m)
    tl.store(O + offs_m[:, None] * stride_om + offs_dv[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty),
             mask=mask_m[:, None] & (offs_dv[None, :] < DV))


def descriptor(t, rows):
    """A (B, H, N, D) view (any strides, last one 1) as a descriptor over (B, N, H, D)
    with [1, rows, 1, next_pow2(D)] blocks."""
    block_d = max(16, triton.next_power_of_2(t.shape[-1]))
    return TensorDescriptor(t, [t.shape[0], t.shape[2], t.shape[1], t.shape[3]],
                            [t.stride(0), t.stride(2), t.stride(1), 1], [1, rows, 1, block_d])


def tma_attention(q, k, v, scale, out_dtype, bm=128, bn=64, warps=8, stages=4, maxnreg=None):
    import torch
    B, H, NQ, D = q.shape
    NK, DV = k.shape[2], v.shape[-1]
    out = torch.empty(B, H, NQ, DV, device=q.device, dtype=out_dtype)
    lse = torch.empty(B, H, NQ, device=q.device, dtype=torch.float32)
    extra = {} if maxnreg is None else {"maxnreg": maxnreg}
    tma_forward_kernel[(triton.cdiv(NQ, bm), B * H)](
        descriptor(q, bm), descriptor(k, bn), descriptor(v, bn), out, lse,
        out.stride(0), out.stride(1), out.stride(2), H, NQ, NK, scale * 1.4426950408889634,
        DV=DV, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **extra)
    return out, lse
