"""Mamba-1's selective scan (S6) as Triton kernels (CUDA, or Triton's CPU interpreter), forward and
backward, for unpacked batches:

    h_t = exp(dt_t A) * h_{t-1} + dt_t x_t B_t,   y_t = (C_t . h_t + D x_t) * silu(z_t)

Layout: one program per (sequence, block of BD channels) holds its [BD, N] slice of the state in
registers and walks the sequence, as mamba_ssm's selective-scan kernel does; exp(dt A) <= 1 is the only
exponential formed (no division by a decay). The forward writes every state h_t ([B, T, D, N] float32)
for the backward, which walks back from T - 1 carrying g_t = dL/dh_t (g_{t-1} = exp(dt_t A) g_t + the
output's share C_t dy_t), reading h_{t-1} from that record instead of recomputing it. Sums over the
sequence (dA, dD) are kept per sequence and sums over channels (dB, dC) per channel block, and added in
PyTorch: no atomics, so the gradients are deterministic. Everything runs in float32 whatever the input
dtype (the interpreter's bf16 arithmetic is wrong; the state wants float32 anyway).
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

BLOCK_D = 16  # channels per program: at least 16 so that the same code is valid on GPUs


@triton.jit
def s6_fwd_kernel(x, dt, A, Bm, Cm, Ds, z, h0, y, hs, ht, T, D: tl.constexpr, N: tl.constexpr,
                  BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                  USE_H0: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    od = tl.program_id(1) * BD + tl.arange(0, BD)
    on = tl.arange(0, BN)
    md, mn = od < D, on < N
    m2 = md[:, None] & mn[None, :]
    tile = od[:, None] * N + on[None, :]
    a_mat = tl.load(A + tile, mask=m2, other=0.0).to(tl.float32)
    h = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_H0:
        h = tl.load(h0 + b * D * N + tile, mask=m2, other=0.0).to(tl.float32)
    if HAS_D:
        skip = tl.load(Ds + od, mask=md, other=0.0).to(tl.float32)
    for t in range(T):
        row = b * T + t
        xt = tl.load(x + row * D + od, mask=md, other=0.0).to(tl.float32)
        dtt = tl.load(dt + row * D + od, mask=md, other=0.0).to(tl.float32)
        bt = tl.load(Bm + row * N + on, mask=mn, other=0.0).to(tl.float32)
        ct = tl.load(Cm + row * N + on, mask=mn, other=0.0).to(tl.float32)
        h = tl.exp(dtt[:, None] * a_mat) * h + (dtt * xt)[:, None] * bt[None, :]
        tl.store(hs + row * D * N + tile, h, mask=m2)
        yt = tl.sum(h * ct[None, :], axis=1)
        if HAS_D:
            yt += skip * xt
        if HAS_Z:
            zt = tl.load(z + row * D + od, mask=md, other=0.0).to(tl.float32)
            yt = yt * zt * tl.sigmoid(zt)
        tl.store(y + row * D + od, yt, mask=md)
    tl.store(ht + b * D * N + tile, h, mask=m2)


@triton.jit
def s6_bwd_kernel(x, dt, A, Bm, Cm, Ds, z, h0, hs, dy, dht, dx, ddt, dz, dA_part, dD_part, dB_part, dC_part,
                  dh0, T, B, D: tl.constexpr, N: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr,
                  HAS_D: tl.constexpr, HAS_Z: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1).to(tl.int64)
    od = pd * BD + tl.arange(0, BD)
    on = tl.arange(0, BN)
    md, mn = od < D, on < N
    m2 = md[:, None] & mn[None, :]
    tile = od[:, None] * N + on[None, :]
    a_mat = tl.load(A + tile, mask=m2, other=0.0).to(tl.float32)
    g = tl.zeros([BD, BN], dtype=tl.float32)
    if USE_DHT:
        g = tl.load(dht + b * D * N + tile, mask=m2, other=0.0).to(tl.float32)
    first = tl.zeros([BD, BN], dtype=tl.float32)  # the state before step 0
    if USE_H0:
        first = tl.load(h0 + b * D * N + tile, mask=m2, other=0.0).to(tl.float32)
    skip = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        skip = tl.load(Ds + od, mask=md, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BD, BN], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        row = b * T + t
        xt = tl.load(x + row * D + od, mask=md, other=0.0).to(tl.float32)
        dtt = tl.load(dt + row * D + od, mask=md, other=0.0).to(tl.float32)
        bt = tl.load(Bm + row * N + on, mask=mn, other=0.0).to(tl.float32)
        ct = tl.load(Cm + row * N + on, mask=mn, other=0.0).to(tl.float32)
        dyt = tl.load(dy + row * D + od, mask=md, other=0.0).to(tl.float32)
        h_t = tl.load(hs + row * D * N + tile, mask=m2, other=0.0)
        steps = tl.zeros([BD, BN], dtype=tl.int32) + t  # t as a tile: a tensor mask on GPU and interpreter
        h_prev = tl.load(hs + (row - 1) * D * N + tile, mask=m2 & (steps > 0), other=0.0)
        h_prev += tl.where(steps == 0, first, 0.0)
        gy = dyt
        if HAS_Z:
            zt = tl.load(z + row * D + od, mask=md, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zt)
            y_pre = tl.sum(h_t * ct[None, :], axis=1) + skip * xt
            gy = dyt * zt * sz
            tl.store(dz + row * D + od, dyt * y_pre * (sz + zt * sz * (1.0 - sz)), mask=md)
        g += gy[:, None] * ct[None, :]
        tl.store(dC_part + (pd * B * T + row) * N + on, tl.sum(gy[:, None] * h_t, axis=0), mask=mn)
        dD_acc += gy * xt
        gb = tl.sum(g * bt[None, :], axis=1)  # dL/d(dt x) through the input term
        tl.store(dB_part + (pd * B * T + row) * N + on, tl.sum(g * (dtt * xt)[:, None], axis=0), mask=mn)
        a = tl.exp(dtt[:, None] * a_mat)
        dlog = g * h_prev * a  # dL/d(dt A)
        tl.store(dx + row * D + od, gy * skip + dtt * gb, mask=md)
        tl.store(ddt + row * D + od, xt * gb + tl.sum(dlog * a_mat, axis=1), mask=md)
        dA_acc += dlog * dtt[:, None]
        g = g * a
    tl.store(dA_part + b * D * N + tile, dA_acc, mask=m2)
    tl.store(dD_part + b * D + od, dD_acc, mask=md)
    if USE_H0:
        tl.store(dh0 + b * D * N + tile, g, mask=m2)


def _blocks(D: int, N: int):
    return BLOCK_D, max(16, triton.next_power_of_2(N)), triton.cdiv(D, BLOCK_D)


@functools.cache
def _function():
    import torch

    from alloyml.kernels.common.triton_autograd import device_guard

    class S6Triton(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, dt, A, B, C, D, z, h0):
            ctx.set_materialize_grads(False)
            b, T, Dm = x.shape
            N = A.shape[1]
            BD, BN, ND = _blocks(Dm, N)
            f32 = torch.float32
            y = x.new_empty(b, T, Dm, dtype=f32)
            hs = x.new_empty(b, T, Dm, N, dtype=f32)
            ht = x.new_empty(b, Dm, N, dtype=f32)
            with device_guard(x):
                s6_fwd_kernel[(b, ND)](x, dt, A, B, C, x if D is None else D, x if z is None else z,
                                       x if h0 is None else h0, y, hs, ht, T, D=Dm, N=N, BD=BD, BN=BN,
                                       HAS_D=D is not None, HAS_Z=z is not None, USE_H0=h0 is not None)
            ctx.save_for_backward(x, dt, A, B, C, D, z, h0, hs)
            return y.to(x.dtype), ht

        @staticmethod
        def backward(ctx, dy, dht):
            x, dt, A, B, C, D, z, h0, hs = ctx.saved_tensors
            b, T, Dm = x.shape
            N = A.shape[1]
            BD, BN, ND = _blocks(Dm, N)
            f32 = torch.float32
            dy = torch.zeros_like(x) if dy is None else dy.contiguous()
            dx, ddt = (x.new_empty(b, T, Dm, dtype=f32) for _ in range(2))
            dz = x.new_empty(b, T, Dm, dtype=f32) if z is not None else None
            dA_part = x.new_empty(b, Dm, N, dtype=f32)
            dD_part = x.new_empty(b, Dm, dtype=f32)
            dB_part, dC_part = (x.new_empty(ND, b, T, N, dtype=f32) for _ in range(2))
            dh0 = x.new_empty(b, Dm, N, dtype=f32) if h0 is not None else None
            with device_guard(x):
                s6_bwd_kernel[(b, ND)](
                    x, dt, A, B, C, x if D is None else D, x if z is None else z, x if h0 is None else h0, hs,
                    dy, x if dht is None else dht.contiguous(), dx, ddt, x if dz is None else dz, dA_part,
                    dD_part, dB_part, dC_part, x if dh0 is None else dh0, T, b, D=Dm, N=N, BD=BD, BN=BN,
                    HAS_D=D is not None, HAS_Z=z is not None, USE_H0=h0 is not None, USE_DHT=dht is not None)
            return (dx.to(x.dtype), ddt.to(dt.dtype), dA_part.sum(0).to(A.dtype), dB_part.sum(0).to(B.dtype),
                    dC_part.sum(0).to(C.dtype), None if D is None else dD_part.sum(0).to(D.dtype),
                    None if z is None else dz.to(z.dtype), None if h0 is None else dh0.to(h0.dtype))

    return S6Triton


def s6_triton(x, dt, A, B, C, D=None, z=None, initial_state=None):
    """The selective scan on Triton: shapes as in `alloyml.kernels.s6` (no cu_seqlens) -> (y: [b, T, D] in
    x's dtype, final_state: [b, D, N] float32)."""
    args = [None if t is None else t.contiguous() for t in (x, dt, A, B, C, D, z, initial_state)]
    return _function().apply(*args)
