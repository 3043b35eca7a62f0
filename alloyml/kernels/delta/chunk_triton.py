"""The delta rule's chunk-to-chunk pass as a Triton kernel (GPU; tested in Triton's CPU interpreter).

chunk.py's `ut_transform` gives, for every chunk at once, the decayed queries and keys, the causal
decayed Q K^T and the UT-transformed U_part and W (batched PyTorch: matmuls and one triangular solve).
What stays sequential is this pass: with the state S entering a chunk,

    U = U_part - W S,    o = scale (Q_start S + QK U),    S <- e^{gamma_C} S + K_end^T U,

one program per (sequence x head, block of value columns) keeps its [K, BV] slice of S in registers over
all chunks (each value column of S evolves on its own). Everything runs in float32 with exact ("ieee")
float32 products, so it matches the PyTorch pass to rounding. The backward recomputes the PyTorch pass
(`chunk_scan_torch`) and differentiates it: correct gradients, the Triton speed only forward (prefill
and inference); a Triton backward is not written yet.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl


@triton.jit
def delta_chunk_scan_kernel(q_ptr, qk_ptr, u_ptr, w_ptr, k_ptr, a_ptr, s_ptr, o_ptr, sf_ptr, scale,
                            NC, C, K, V, HAS_DECAY: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr):
    bh, pv = tl.program_id(0), tl.program_id(1)
    rc = tl.arange(0, BC)
    rk = tl.arange(0, BK)
    rv = pv * BV + tl.arange(0, BV)
    rc2 = tl.arange(0, BC)
    mc, mk, mv = rc < C, rk < K, rv < V
    S = tl.load(s_ptr + bh * K * V + rk[:, None] * V + rv[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
    for i in range(NC):
        chunk = bh * NC + i
        ck = chunk * C * K + rc[:, None] * K + rk[None, :]
        cv = chunk * C * V + rc[:, None] * V + rv[None, :]
        m_ck, m_cv = mc[:, None] & mk[None, :], mc[:, None] & mv[None, :]
        w = tl.load(w_ptr + ck, mask=m_ck, other=0.0)  # [BC, BK]
        u = tl.load(u_ptr + cv, mask=m_cv, other=0.0) - tl.dot(w, S, input_precision="ieee")  # [BC, BV]
        q = tl.load(q_ptr + ck, mask=m_ck, other=0.0)
        qk = tl.load(qk_ptr + chunk * C * C + rc[:, None] * C + rc2[None, :], mask=mc[:, None] & (rc2 < C)[None, :],
                     other=0.0)  # [BC, BC]
        o = scale * (tl.dot(q, S, input_precision="ieee") + tl.dot(qk, u, input_precision="ieee"))
        tl.store(o_ptr + cv, o, mask=m_cv)
        k = tl.load(k_ptr + ck, mask=m_ck, other=0.0)
        if HAS_DECAY:
            S = tl.load(a_ptr + chunk) * S
        S = S + tl.dot(tl.trans(k), u, input_precision="ieee")
    tl.store(sf_ptr + bh * K * V + rk[:, None] * V + rv[None, :], S, mask=mk[:, None] & mv[None, :])


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))  # tl.dot needs sides >= 16


def launch_scan(q_start, qk, u_part, w, k_end, end_decay, S, scale):
    """Shapes as chunk.chunk_scan_torch; float32 CUDA tensors (or CPU under TRITON_INTERPRET=1)."""
    import torch

    B, H, n, C, K = q_start.shape
    V = u_part.shape[-1]
    q_start, qk, u_part, w, k_end, S = (x.float().contiguous() for x in (q_start, qk, u_part, w, k_end, S))
    decay = (end_decay.float().reshape(B, H, n).contiguous() if end_decay is not None
             else q_start.new_ones(1))  # not read without decay
    o = torch.empty(B, H, n, C, V, dtype=torch.float32, device=q_start.device)
    final = torch.empty(B, H, K, V, dtype=torch.float32, device=q_start.device)
    BV = min(_block(V), 64)
    grid = (B * H, triton.cdiv(V, BV))
    delta_chunk_scan_kernel[grid](q_start, qk, u_part, w, k_end, decay, S, o, final, float(scale), n, C, K, V,
                                  HAS_DECAY=end_decay is not None, BC=_block(C), BK=_block(K), BV=BV)
    return o, final


@functools.cache
def _function():
    import torch

    from alloyml.kernels.common.triton_autograd import device_guard
    from alloyml.kernels.delta.chunk import chunk_scan_torch

    class DeltaChunkScanFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q_start, qk, u_part, w, k_end, end_decay, S, scale):
            ctx.save_for_backward(q_start, qk, u_part, w, k_end, end_decay, S)
            ctx.scale = scale
            with device_guard(q_start):
                return launch_scan(q_start, qk, u_part, w, k_end, end_decay, S, scale)

        @staticmethod
        def backward(ctx, do, dS):
            saved = [None if x is None else x.detach().requires_grad_() for x in ctx.saved_tensors]
            leaves = [x for x in saved if x is not None]
            with torch.enable_grad():
                o, final = chunk_scan_torch(*saved, ctx.scale)
                pairs = [(x, g) for x, g in ((o, do), (final, dS)) if g is not None]
                grads = iter(torch.autograd.grad([x for x, _ in pairs], leaves, [g for _, g in pairs],
                                                 allow_unused=True))
            return (*(None if x is None else next(grads) for x in saved), None)

    return DeltaChunkScanFunction


def chunk_scan_triton(q_start, qk, u_part, w, k_end, end_decay, S, scale):
    """chunk.chunk_scan_torch's result by the Triton kernel, differentiable (the backward recomputes the
    PyTorch pass). float32 in and out (float64 inputs are run in float32)."""
    return _function().apply(q_start, qk, u_part, w, k_end, end_decay, S, scale)
