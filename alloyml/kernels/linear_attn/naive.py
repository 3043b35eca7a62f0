"""Causal linear attention as a plain recurrence over time, written from the papers' equations: the
ground truth for the chunked forms and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_linear_attn(q, k, v, decay=None, *, scale=None, normalize=False, initial_state=None,
                      output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.linear_attn`. Computes in float32, or float64 for float64
    inputs.

    RetNet's recurrent retention (Sun et al. 2023), gamma = 1 without decay as in "Transformers are RNNs"
    (Katharopoulos et al. 2020):
        S_t = gamma S_{t-1} + k_t v_t^T,    o_t = scale * S_t^T q_t
    normalised (Katharopoulos et al., eq. 20) by the running key sum z_t = gamma z_{t-1} + k_t:
        o_t = scale * S_t^T q_t / (scale * z_t . q_t + eps)
    S and z are kept apart here; the state handed in and out is [S | z] ([.., K, V + 1])."""
    import torch

    from alloyml.kernels.common.checks import default_scale
    from alloyml.kernels.common.naive import compute_dtype, per_sequence
    from alloyml.kernels.linear_attn import NORMALIZER_EPS

    scale = default_scale(scale, q.shape[-1])

    def run(q, k, v, initial_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        dtype, c = q.dtype, compute_dtype(q.dtype)
        gamma = q.new_ones(H, dtype=c) if decay is None else decay.to(c)  # [H]
        if initial_state is None:
            S, z = q.new_zeros(B, H, K, V, dtype=c), q.new_zeros(B, H, K, dtype=c)
        else:
            S, z = initial_state[..., :V].to(c), (initial_state[..., V].to(c) if normalize else None)
        outs = []
        for q_t, k_t, v_t in zip(*(x.to(c).unbind(1) for x in (q, k, v)), strict=True):
            S = gamma[:, None, None] * S + k_t[..., :, None] * v_t[..., None, :]  # [B, H, K, V]
            o_t = scale * (q_t[..., None, :] @ S).squeeze(-2)  # [B, H, V]
            if normalize:
                z = gamma[:, None] * z + k_t  # [B, H, K]
                o_t = o_t / (scale * (z * q_t).sum(-1, keepdim=True) + NORMALIZER_EPS)
            outs.append(o_t)
        state = torch.cat([S, z[..., None]], dim=-1) if normalize else S
        return torch.stack(outs, dim=1).to(dtype), state

    return per_sequence(run, {"q": q, "k": k, "v": v}, initial_state, output_final_state, cu_seqlens)
