"""Gated linear attention, one token at a time (decoding)."""

from __future__ import annotations


def gla_step(q, k, v, g, state=None, *, scale: float | None = None):
    """One step of S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = scale * q_t^T S_t.

    q, k, g: [B, H, K] (g: log-space gates <= 0), v: [B, H, V], state: [B, H, K, V] or None (zeros).
    Returns (o: [B, H, V] in q's dtype, new_state: [B, H, K, V] float32, or float64 for float64 input)."""
    import torch

    from alloyml.kernels.common.checks import check_qkv, check_state, check_tensor, default_scale

    B, H, K, V = check_qkv(q, k, v, token=True)
    check_tensor("g", g, (B, H, K), q)
    check_state("state", state, B, H, K, V, q)
    dtype, compute = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, g = (x.to(compute) for x in (q, k, v, g))
    state = q.new_zeros(B, H, K, V) if state is None else state.to(compute)
    state = g.exp()[..., None] * state + k[..., None] * v[..., None, :]  # [B, H, K, V]
    o = default_scale(scale, K) * (q[..., None, :] @ state).squeeze(-2)  # [B, H, V]
    return o.to(dtype), state
