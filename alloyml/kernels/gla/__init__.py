"""Gated linear attention (GLA; with per-channel decay it also covers RWKV-6-style data-dependent decay)."""

from __future__ import annotations

from functools import partial

from alloyml.kernels.gla.chunk import chunk_gla
from alloyml.kernels.gla.naive import naive_gla
from alloyml.kernels.gla.recurrent import gla_step

IMPLEMENTATIONS = {
    "naive": naive_gla,
    "chunk": partial(chunk_gla, engine="chunk"),
    "triton": partial(chunk_gla, engine="triton"),
    "triton_recurrent": partial(chunk_gla, engine="triton_recurrent"),
}


def gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None,
        backend="auto"):
    """Gated linear attention (Yang et al. 2023): S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,
    o_t = scale * q_t^T S_t.

    q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H, K] log-space forget gates (<= 0, e.g.
    logsigmoid(x) / 16); scale: default K ** -0.5; initial_state: [N, H, K, V] (N = B, or the number of
    packed sequences); cu_seqlens: int64 offsets [N + 1] of packed sequences in a batch of one;
    backend: "auto" (CUDA -> "triton", else "chunk"), "naive" (the float32 recurrence), "chunk"
    (chunked PyTorch), "triton" (chunked Triton kernels) or "triton_recurrent" (step-by-step Triton kernels,
    slower on long sequences).
    Returns (o: [B, T, H, V] in q's dtype, final_state: [N, H, K, V] float32, or None when
    `output_final_state` is False)."""
    from alloyml.kernels.common import checks

    B, T, H, K, V = checks.check_qkv(q, k, v)
    checks.check_tensor("g", g, (B, T, H, K), q)
    N = checks.check_cu_seqlens(cu_seqlens, B, T)
    checks.check_state("initial_state", initial_state, N, H, K, V, q)
    run = IMPLEMENTATIONS[checks.resolve_backend(backend, q)]
    return run(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
               cu_seqlens=cu_seqlens)


__all__ = ["chunk_gla", "gla", "gla_step", "naive_gla"]
