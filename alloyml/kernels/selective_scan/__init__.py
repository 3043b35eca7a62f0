"""Mamba's selective state-space scan, in the SSD form of Mamba-2 (Dao & Gu 2024).

Why SSD: Mamba-1 gives every state channel its own decay exp(dt * A_k); Mamba-2 ties A to one scalar
per head. With a scalar decay the scan is exactly a (scalar-)gated linear attention, so it has a
chunkwise-parallel form built from matrix products (the same engine as `linear_attn` and `gla`), which
is what makes it fast to train on CPUs and tensor cores alike; the per-channel scan of Mamba-1 has no
such form and runs as a sequential scan.

The op is defined here: checks, then the gated recurrence of common/chunk.py. naive.py is the reference
recurrence, recurrent.py the one-token step for decoding.
"""

from __future__ import annotations

import math

from alloyml.kernels.selective_scan.naive import naive_selective_scan
from alloyml.kernels.selective_scan.recurrent import selective_scan_step


def selective_scan(x, dt, A, B, C, D=None, *, initial_state=None, output_final_state=True, cu_seqlens=None,
                   backend="auto"):
    """Selective scan, SSD form: h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t, y_t = C_t h_t + D x_t.

    x: [b, T, H, V] (V = head dim P of Mamba-2); dt: [b, T, H] step sizes, already softplus'ed (> 0);
    A: [H] negative decay rates; B, C: [b, T, H, K] input and output projections (K = state size N of
    Mamba-2; share them across heads with `expand`); D: [H] skip or None; initial_state: [n, H, K, V]
    (n = b, or the number of packed sequences); cu_seqlens: int64 offsets [n + 1] of packed sequences in
    a batch of one;
    backend: "auto" (CUDA -> "triton", else "chunk"), "naive" (the reference recurrence, float64 for
    float64 inputs), "chunk" (chunked PyTorch), "triton" (chunked Triton kernels) or "triton_recurrent"
    (step-by-step Triton kernels, slower on long sequences).
    Returns (y: [b, T, H, V] in x's dtype, final_state: [n, H, K, V] float32, or None when
    `output_final_state` is False)."""
    import torch

    from alloyml.kernels.common import checks
    from alloyml.kernels.common.chunk import chunk_gated

    b, T, H, K, V = checks.check_qkv(C, B, x, names=("C", "B", "x"))
    checks.check_tensor("dt", dt, (b, T, H), x)
    checks.check_tensor("A", A, (H,), x)
    checks.check_range("A", A, -math.inf, 0.0, low_open=False)
    if D is not None:
        checks.check_tensor("D", D, (H,), x)
    n = checks.check_cu_seqlens(cu_seqlens, b, T)
    checks.check_state("initial_state", initial_state, n, H, K, V, x)
    backend = checks.resolve_backend(backend, x)
    if backend == "naive":
        return naive_selective_scan(x, dt, A, B, C, D, initial_state=initial_state,
                                    output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    # SSD is the gated recurrence with q = C, k = dt * B, v = x, the scalar log-gate dt * A per head and
    # step, and scale 1; the skip D x is added outside. dt * B and the gate dt * A stay in float32 whatever
    # x's dtype (as mamba_ssm keeps dt): rounding dt * B to bfloat16 put the final state 1.5e-3 off.
    compute = torch.promote_types(x.dtype, torch.float32)
    k = dt.to(compute)[..., None] * B.to(compute)  # [b, T, H, K]
    g = dt.to(compute) * A.to(compute)  # [b, T, H]
    y, state = chunk_gated(C, k, x, g, scale=1.0, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend)
    if D is not None:
        y = (y.to(compute) + D.to(compute)[:, None] * x.to(compute)).to(y.dtype)
    return y, state


__all__ = ["naive_selective_scan", "selective_scan", "selective_scan_step"]
