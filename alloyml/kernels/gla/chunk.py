"""Gated linear attention in chunkwise-parallel form: PyTorch on CPU, Triton on GPU (common/)."""

from __future__ import annotations


def chunk_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=True, cu_seqlens=None,
              engine="chunk"):
    """Shapes and meaning as in `alloyml.kernels.gla`; GLA is the gated recurrence with per-channel gates."""
    from alloyml.kernels.common.checks import default_scale
    from alloyml.kernels.common.chunk import chunk_gated

    return chunk_gated(q, k, v, g, scale=default_scale(scale, q.shape[-1]), initial_state=initial_state,
                       output_final_state=output_final_state, cu_seqlens=cu_seqlens, engine=engine)
