"""The delta rule as a plain recurrence over time, written from the papers' equations: the ground truth
for the chunked form and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=True,
                     cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.delta`. Computes in float32, or float64 for float64 inputs.

    DeltaNet (Schlag et al. 2021; Yang et al. 2024) and Gated DeltaNet (Yang et al. 2025), in the
    papers' [V, K] orientation with alpha_t = exp(g_t) (alpha_t = 1 without gates):
        S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,     o_t = scale * S_t q_t
    written as the rank-one correction it is (S' = alpha_t S_{t-1}; S_t = S' + beta_t (v_t - S' k_t) k_t^T)
    so a step costs O(K V). The state is kept and returned transposed, [K, V], as every op here keeps it."""
    import torch

    from alloyml.kernels.common.checks import default_scale
    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    scale = default_scale(scale, q.shape[-1])

    def run(q, k, v, beta, initial_state, g=None):
        B, T, H, K = q.shape
        dtype, c = q.dtype, compute_dtype(q.dtype)
        # S: [B, H, V, K], the papers' orientation
        S = (q.new_zeros(B, H, v.shape[-1], K, dtype=c) if initial_state is None
             else initial_state.to(c).transpose(-1, -2))
        alpha = g.to(c).exp() if g is not None else torch.ones_like(beta, dtype=c)
        outs = []
        steps = zip(*(x.to(c).unbind(1) for x in (q, k, v, beta)), alpha.unbind(1), strict=True)
        for q_t, k_t, v_t, b_t, a_t in steps:
            S = a_t[..., None, None] * S
            error = v_t - (S @ k_t[..., None]).squeeze(-1)  # [B, H, V]: what S' predicts wrong for k_t
            S = S + b_t[..., None, None] * error[..., :, None] * k_t[..., None, :]
            outs.append(scale * (S @ q_t[..., None]).squeeze(-1))  # [B, H, V]
        return torch.stack(outs, dim=1).to(dtype), S.transpose(-1, -2)

    inputs = {"q": q, "k": k, "v": v, "beta": beta, **({} if g is None else {"g": g})}
    return per_sequence(run, inputs, initial_state, output_final_state, cu_seqlens)
