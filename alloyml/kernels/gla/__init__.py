"""Gated linear attention (GLA; with per-channel decay it also covers RWKV-6-style data-dependent decay).

The op is defined here: checks, then the gated recurrence of common/chunk.py with GLA's per-channel gates
as they are. naive.py is the reference recurrence, recurrent.py the one-token step for decoding."""

from __future__ import annotations

from alloyml.kernels.gla.naive import naive_gla
from alloyml.kernels.gla.recurrent import gla_step


def gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None,
        backend="auto"):
    """Gated linear attention (Yang et al. 2023): S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,
    o_t = scale * q_t^T S_t.

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log-space forget gates (<= 0, e.g.
    logsigmoid(x) / 16); scale: default K ** -0.5; initial_state: [N, H, K, V] (N = B, or the number of
    packed sequences); cu_seqlens: int64 offsets [N + 1] of packed sequences in a batch of one;
    backend: "auto" (CUDA -> "triton", else "chunk"), "naive" (the reference recurrence, float64 for
    float64 inputs), "chunk" (chunked PyTorch), "triton" (chunked Triton kernels) or "triton_recurrent"
    (step-by-step Triton kernels, slower on long sequences).
    Returns (o: [B, T, H, V] in q's dtype, final_state: [N, H, K, V] float32, or None when
    `output_final_state` is False)."""
    from alloyml.kernels.common import checks
    from alloyml.kernels.common.chunk import chunk_gated

    B, T, H, K, V = checks.check_qkv(q, k, v)
    checks.check_tensor("g", g, (B, T, H, K), q)
    N = checks.check_cu_seqlens(cu_seqlens, B, T)
    checks.check_state("initial_state", initial_state, N, H, K, V, q)
    backend = checks.resolve_backend(backend, q)
    if backend == "naive":
        return naive_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return chunk_gated(q, k, v, g, scale=checks.default_scale(scale, K), initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend)


__all__ = ["gla", "gla_step", "naive_gla"]
