"""Causal linear attention in chunkwise-parallel form: PyTorch on CPU, Triton on GPU (common/).

A per-head decay gamma is the gated recurrence with the constant scalar log-gate log(gamma); the
normaliser is one more value column of ones, whose output is q.z."""

from __future__ import annotations


def chunk_linear_attn(q, k, v, decay=None, *, scale=None, normalize=False, initial_state=None,
                      output_final_state=True, cu_seqlens=None, engine="chunk"):
    """Shapes and meaning as in `alloyml.kernels.linear_attn`."""
    import torch

    from alloyml.kernels.common.checks import default_scale
    from alloyml.kernels.common.chunk import chunk_gated
    from alloyml.kernels.linear_attn.recurrent import NORMALIZER_EPS

    g = None
    if decay is not None:  # log(gamma), the same at every step: [H]
        g = decay.to(torch.promote_types(decay.dtype, torch.float32)).log()
    if normalize:
        v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)  # [B, T, H, V + 1]
    o, state = chunk_gated(q, k, v, g, scale=default_scale(scale, q.shape[-1]), initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens, engine=engine)
    if normalize:
        compute = torch.promote_types(o.dtype, torch.float32)
        o = (o[..., :-1].to(compute) / (o[..., -1:].to(compute) + NORMALIZER_EPS)).to(o.dtype)
    return o, state
