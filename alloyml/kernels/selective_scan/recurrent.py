"""The selective state-space scan (Mamba-2 SSD form), one token at a time (decoding)."""

from __future__ import annotations


def selective_scan_step(x, dt, A, B, C, state=None, D=None):
    """One step of h_t = exp(dt_t A) h_{t-1} + dt_t B_t^T x_t, y_t = C_t h_t + D x_t.

    x: [b, H, V]; dt: [b, H] (> 0, already softplus'ed); A: [H] (< 0); B, C: [b, H, K]; D: [H] or None;
    state: [b, H, K, V] or None (zeros).
    Returns (y: [b, H, V] in x's dtype, new_state: [b, H, K, V] float32, or float64 for float64 input)."""
    import torch

    from alloyml.kernels.common.checks import check_qkv, check_state, check_tensor

    b, H, K, V = check_qkv(C, B, x, token=True, names=("C", "B", "x"))
    check_tensor("dt", dt, (b, H), x)
    check_tensor("A", A, (H,), x)
    if D is not None:
        check_tensor("D", D, (H,), x)
    check_state("state", state, b, H, K, V, x)
    dtype, compute = x.dtype, torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(compute) for t in (x, dt, A, B, C))
    state = x.new_zeros(b, H, K, V) if state is None else state.to(compute)
    decay = (dt * A).exp()[..., None, None]  # [b, H, 1, 1]
    state = decay * state + (dt[..., None] * B)[..., None] * x[..., None, :]  # [b, H, K, V]
    y = (C[..., None, :] @ state).squeeze(-2)  # [b, H, V]
    if D is not None:
        y = y + D.to(compute)[:, None] * x
    return y.to(dtype), state
