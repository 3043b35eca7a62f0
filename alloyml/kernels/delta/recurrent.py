"""The delta rule, one token at a time (decoding)."""

from __future__ import annotations


def delta_rule_step(q, k, v, beta, g=None, state=None, *, scale: float | None = None, l2_normalize=False):
    """One step of S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale * S_t^T q_t
    (state [K, V]; alpha_t = exp(g_t), or 1 when g is None: DeltaNet).

    q, k: [B, H, K]; v: [B, H, V]; beta: [B, H]; g: [B, H] log-gates <= 0 or None; state: [B, H, K, V] or
    None (zeros); l2_normalize: divide q and k by their L2 norms first.
    Returns (o: [B, H, V] in q's dtype, new_state: [B, H, K, V] float32, or float64 for float64 input)."""
    import torch

    from alloyml.kernels.common.checks import default_scale
    from alloyml.kernels.delta import check_delta_inputs, l2_normalized

    B, H, K, V = check_delta_inputs(q, k, v, beta, g, state, None, token=True)
    dtype, c = q.dtype, torch.promote_types(q.dtype, torch.float32)
    if l2_normalize:
        q, k = l2_normalized(q), l2_normalized(k)
    q, k, v, beta = (x.to(c) for x in (q, k, v, beta))
    state = q.new_zeros(B, H, K, V) if state is None else state.to(c)
    if g is not None:
        state = g.to(c).exp()[..., None, None] * state
    delta = beta[..., None] * (v - (k[..., None, :] @ state).squeeze(-2))  # [B, H, V]
    state = state + k[..., :, None] * delta[..., None, :]  # [B, H, K, V]
    o = default_scale(scale, K) * (q[..., None, :] @ state).squeeze(-2)  # [B, H, V]
    return o.to(dtype), state

