"""Causal linear attention (optionally decayed, optionally normalised), one token at a time (decoding)."""

from __future__ import annotations


def linear_attn_step(q, k, v, state=None, decay=None, *, scale: float | None = None, normalize: bool = False):
    """One step of S_t = gamma S_{t-1} + k_t v_t^T, o_t = scale * q_t^T S_t.

    q, k: [B, H, K]; v: [B, H, V]; decay: [H] per-head gamma in (0, 1] or None (no decay);
    state: [B, H, K, V] or None (zeros). With `normalize`, the state carries the key-sum z_t = gamma
    z_{t-1} + k_t as one more column ([B, H, K, V + 1]) and o_t = scale q_t^T S_t / (scale q_t^T z_t + eps).
    Returns (o: [B, H, V] in q's dtype, new_state float32, or float64 for float64 input)."""
    import torch

    from alloyml.kernels.common.checks import check_qkv, check_state, check_tensor, default_scale
    from alloyml.kernels.linear_attn import NORMALIZER_EPS

    B, H, K, V = check_qkv(q, k, v, token=True)
    if decay is not None:
        check_tensor("decay", decay, (H,), q)
    check_state("state", state, B, H, K, V + normalize, q)
    dtype, compute = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = (x.to(compute) for x in (q, k, v))
    if normalize:
        v = torch.cat([v, v.new_ones(B, H, 1)], dim=-1)  # [B, H, V + 1]: the last column sums keys
    state = q.new_zeros(B, H, K, v.shape[-1]) if state is None else state.to(compute)
    if decay is not None:
        state = decay.to(compute)[:, None, None] * state
    state = state + k[..., None] * v[..., None, :]  # [B, H, K, V (+1)]
    o = default_scale(scale, K) * (q[..., None, :] @ state).squeeze(-2)  # [B, H, V (+1)]
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + NORMALIZER_EPS)
    return o.to(dtype), state
