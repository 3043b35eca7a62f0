"""Gated linear attention as a plain recurrence over time, written from the paper's equations: the ground
truth for the chunked forms and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.gla`. Computes in float32, or float64 for float64 inputs.

    Yang et al. (2023), recurrent form: with the forget gate alpha_t = exp(g_t) in (0, 1]^K,
        S_t = (alpha_t 1^T) * S_{t-1} + k_t v_t^T        (row j of the state decays by alpha_t[j])
        o_t = scale * S_t^T q_t"""
    import torch

    from alloyml.kernels.common.checks import default_scale
    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    scale = default_scale(scale, q.shape[-1])

    def run(q, k, v, g, initial_state):
        B, T, H, K = q.shape
        dtype, c = q.dtype, compute_dtype(q.dtype)
        S = q.new_zeros(B, H, K, v.shape[-1], dtype=c) if initial_state is None else initial_state.to(c)
        alpha = g.to(c).exp()
        outs = []
        # unbind, not x[:, t]: each x[:, t] would give the backward a zero-filled [B, T, ...] gradient per
        # step, a cost quadratic in T that would make this reference look slower than a recurrence is.
        for q_t, k_t, v_t, a_t in zip(*(x.to(c).unbind(1) for x in (q, k, v)), alpha.unbind(1), strict=True):
            S = a_t[..., :, None] * S + k_t[..., :, None] * v_t[..., None, :]  # [B, H, K, V]
            outs.append(scale * (q_t[..., None, :] @ S).squeeze(-2))  # [B, H, V]
        return torch.stack(outs, dim=1).to(dtype), S

    return per_sequence(run, {"q": q, "k": k, "v": v, "g": g}, initial_state, output_final_state, cu_seqlens)
