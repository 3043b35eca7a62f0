"""The real diagonal recurrence h_t = exp(log_a_t) h_{t-1} + b_t as Triton kernels (CUDA, or Triton's CPU
interpreter), forward and backward, for the per-step-decay ops without packing (RG-LRU).

One program per (sequence, block of BM channels) keeps its channels' state in registers and walks the
sequence (the layout of the S6 kernels in s6/triton_scan.py, with a vector state instead of [D, N]).
The backward walks back carrying g_t = dL/dh_t + a_{t+1} g_{t+1}: dL/db_t = g_t and
dL/dlog_a_t = g_t a_t h_{t-1}, reading h_{t-1} from the forward's output. Float32 throughout.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

BLOCK_M = 128  # channels per program


@triton.jit
def diagonal_scan_fwd_kernel(log_a, b, h, T, M: tl.constexpr, BM: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    om = tl.program_id(1) * BM + tl.arange(0, BM)
    mm = om < M
    state = tl.zeros([BM], dtype=tl.float32)
    for t in range(T):
        row = (s * T + t) * M
        la = tl.load(log_a + row + om, mask=mm, other=0.0).to(tl.float32)
        state = tl.exp(la) * state + tl.load(b + row + om, mask=mm, other=0.0).to(tl.float32)
        tl.store(h + row + om, state, mask=mm)


@triton.jit
def diagonal_scan_bwd_kernel(log_a, h, dh, dlog_a, db, T, M: tl.constexpr, BM: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    om = tl.program_id(1) * BM + tl.arange(0, BM)
    mm = om < M
    g = tl.zeros([BM], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        row = (s * T + t) * M
        g += tl.load(dh + row + om, mask=mm, other=0.0).to(tl.float32)
        a = tl.exp(tl.load(log_a + row + om, mask=mm, other=0.0).to(tl.float32))
        steps = tl.zeros([BM], dtype=tl.int32) + t  # t as a tensor: a mask on GPU and in the interpreter
        h_prev = tl.load(h + row - M + om, mask=mm & (steps > 0), other=0.0)
        tl.store(db + row + om, g, mask=mm)
        tl.store(dlog_a + row + om, g * a * h_prev, mask=mm)
        g = g * a


@functools.cache
def _function():
    import torch

    from alloyml.kernels.common.triton_autograd import device_guard

    class DiagonalScanTriton(torch.autograd.Function):
        @staticmethod
        def forward(ctx, log_a, b):
            B, T, M = b.shape
            h = torch.empty(B, T, M, dtype=torch.float32, device=b.device)
            with device_guard(b):
                diagonal_scan_fwd_kernel[(B, triton.cdiv(M, BLOCK_M))](log_a, b, h, T, M=M, BM=BLOCK_M)
            ctx.save_for_backward(log_a, h)
            return h

        @staticmethod
        def backward(ctx, dh):
            log_a, h = ctx.saved_tensors
            B, T, M = h.shape
            dlog_a, db = torch.empty_like(h), torch.empty_like(h)
            with device_guard(h):
                diagonal_scan_bwd_kernel[(B, triton.cdiv(M, BLOCK_M))](log_a, h, dh.contiguous(), dlog_a, db, T,
                                                                        M=M, BM=BLOCK_M)
            return dlog_a.to(log_a.dtype), db

    return DiagonalScanTriton


def diagonal_scan_triton(log_a, b):
    """All h_t = exp(log_a_t) h_{t-1} + b_t from zero along axis 1: log_a (broadcastable to b) and b:
    [B, T, ...] real -> h: [B, T, ...] float32. Gradients reach log_a (its shape) and b."""
    import torch

    Bsz, T = b.shape[:2]
    rest = b.shape[2:]
    log_a = log_a.to(torch.float32).expand(b.shape).reshape(Bsz, T, -1).contiguous()
    h = _function().apply(log_a, b.to(torch.float32).reshape(Bsz, T, -1).contiguous())
    return h.reshape(Bsz, T, *rest)
