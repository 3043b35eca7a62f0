"""Mamba-1's selective scan (S6), one token at a time (decoding)."""

from __future__ import annotations


def s6_step(x, dt, A, B, C, D=None, z=None, state=None):
    """One step of h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t, y_t = C_t h_t + D x_t (times silu(z_t)).

    x, dt: [b, D] (dt > 0, already softplus'ed); A: [D, N] (< 0); B, C: [b, N]; D: [D] or None; z: [b, D]
    or None; state: [b, D, N] or None (zeros).
    Returns (y: [b, D] in x's dtype, new_state: [b, D, N] float32, or float64 for float64 input)."""
    import torch
    import torch.nn.functional as F

    from alloyml.kernels.s6 import check_s6_inputs

    check_s6_inputs(x, dt, A, B, C, D, z, state, x.shape[0], token=True)
    f = torch.promote_types(x.dtype, torch.float32)
    xf, dtf = x.to(f), dt.to(f)
    h = (dtf * xf)[..., None] * B.to(f)[:, None, :]
    if state is not None:
        h = h + torch.exp(dtf[..., None] * A.to(f)) * state.to(f)
    y = (h * C.to(f)[:, None, :]).sum(-1)
    if D is not None:
        y = y + D.to(f) * xf
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype), h
