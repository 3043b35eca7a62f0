"""Causal linear attention with an optional per-head decay: "Transformers are RNNs" (Katharopoulos et al.
2020) without decay, RetNet retention (Sun et al. 2023) with gamma_h = 1 - 2 ** (-5 - h)."""

from __future__ import annotations

from functools import partial

from alloyml.kernels.linear_attn.chunk import chunk_linear_attn
from alloyml.kernels.linear_attn.naive import naive_linear_attn
from alloyml.kernels.linear_attn.recurrent import NORMALIZER_EPS, linear_attn_step

IMPLEMENTATIONS = {
    "naive": naive_linear_attn,
    "chunk": partial(chunk_linear_attn, engine="chunk"),
    "triton": partial(chunk_linear_attn, engine="triton"),
    "triton_recurrent": partial(chunk_linear_attn, engine="triton_recurrent"),
}


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
    backend: "auto" (CUDA -> "triton", else "chunk"), "naive" (the float32 recurrence), "chunk"
    (chunked PyTorch), "triton" (chunked Triton kernels) or "triton_recurrent" (step-by-step Triton kernels,
    slower on long sequences).
    Returns (o: [B, T, H, V] in q's dtype, final_state float32, or None when `output_final_state` is
    False)."""
    from alloyml.kernels.common import checks

    B, T, H, K, V = checks.check_qkv(q, k, v)
    if decay is not None:
        checks.check_tensor("decay", decay, (H,), q)
        checks.check_range("decay", decay, 0.0, 1.0)
    N = checks.check_cu_seqlens(cu_seqlens, B, T)
    checks.check_state("initial_state", initial_state, N, H, K, V + bool(normalize), q)
    run = IMPLEMENTATIONS[checks.resolve_backend(backend, q)]
    return run(q, k, v, decay, scale=scale, normalize=normalize, initial_state=initial_state,
               output_final_state=output_final_state, cu_seqlens=cu_seqlens)


__all__ = ["NORMALIZER_EPS", "chunk_linear_attn", "linear_attn", "linear_attn_step", "naive_linear_attn"]
