"""Causal linear attention with an optional per-head decay: "Transformers are RNNs" (Katharopoulos et al.
2020) without decay, RetNet retention (Sun et al. 2023) with gamma_h = 1 - 2 ** (-5 - h).

The op is defined here: checks, then the gated recurrence of common/chunk.py, where a per-head decay
gamma is the constant log-gate log(gamma) and the normaliser is one more value column of ones (whose
output is q.z). naive.py is the reference recurrence, recurrent.py the one-token step for decoding."""

from __future__ import annotations

NORMALIZER_EPS = 1e-6  # added to the normaliser q.z so a vanishing key-sum cannot divide by zero

from alloyml.kernels.linear_attn.naive import naive_linear_attn  # noqa: E402  (after the constant it uses)
from alloyml.kernels.linear_attn.recurrent import linear_attn_step  # noqa: E402


def linear_attn(q, k, v, decay=None, *, scale=None, normalize=False, initial_state=None,
                output_final_state=True, cu_seqlens=None, backend="auto"):
    """Causal linear attention: S_t = gamma S_{t-1} + k_t v_t^T, o_t = scale * q_t^T S_t.

    q, k: [B, T, H, K] (feature maps already applied, e.g. elu(x) + 1); v: [B, T, H, V];
    decay: [H] per-head gamma in (0, 1], or None for no decay; scale: default K ** -0.5;
    normalize: divide by the running key-sum normaliser, o_t = scale q_t^T S_t / (scale q_t^T z_t + eps)
    with z_t = gamma z_{t-1} + k_t and eps = NORMALIZER_EPS (1e-6); z then travels in the state as one
    more value column, so initial_state and final_state are [N, H, K, V + 1];
    initial_state: [N, H, K, V] (N = B, or the number of packed sequences); cu_seqlens: int64 offsets
    [N + 1] of packed sequences in a batch of one;
    backend: "auto" (CUDA -> "triton", else "chunk"), "naive" (the reference recurrence, float64 for
    float64 inputs), "chunk" (chunked PyTorch), "triton" (chunked Triton kernels) or "triton_recurrent"
    (step-by-step Triton kernels, slower on long sequences).
    Returns (o: [B, T, H, V] in q's dtype, final_state float32, or None when `output_final_state` is
    False)."""
    import torch

    from alloyml.kernels.common import checks
    from alloyml.kernels.common.chunk import chunk_gated

    B, T, H, K, V = checks.check_qkv(q, k, v)
    if decay is not None:
        checks.check_tensor("decay", decay, (H,), q)
        checks.check_range("decay", decay, 0.0, 1.0)
    N = checks.check_cu_seqlens(cu_seqlens, B, T)
    checks.check_state("initial_state", initial_state, N, H, K, V + bool(normalize), q)
    backend = checks.resolve_backend(backend, q)
    if backend == "naive":
        return naive_linear_attn(q, k, v, decay, scale=scale, normalize=normalize, initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    g = None
    if decay is not None:  # log(gamma), the same at every step: [H], in float32 (float64 for float64 inputs)
        g = decay.to(torch.promote_types(torch.promote_types(decay.dtype, q.dtype), torch.float32)).log()
    if normalize:
        v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # [B, T, H, V + 1]
    o, state = chunk_gated(q, k, v, g, scale=checks.default_scale(scale, K), initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend)
    if normalize:
        compute = torch.promote_types(o.dtype, torch.float32)
        o = (o[..., :-1].to(compute) / (o[..., -1:].to(compute) + NORMALIZER_EPS)).to(o.dtype)
    return o, state


__all__ = ["NORMALIZER_EPS", "linear_attn", "linear_attn_step", "naive_linear_attn"]
