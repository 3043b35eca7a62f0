"""The selective scan in chunkwise-parallel (SSD) form: PyTorch on CPU, Triton on GPU (common/).

SSD is the gated recurrence with q = C, k = dt * B, v = x, the scalar log-gate dt * A per head and step,
and scale 1; the skip D x is added outside."""

from __future__ import annotations


def chunk_selective_scan(x, dt, A, B, C, D=None, *, initial_state=None, output_final_state=True,
                         cu_seqlens=None, engine="chunk"):
    """Shapes and meaning as in `alloyml.kernels.selective_scan`."""
    import torch

    from alloyml.kernels.common.chunk import chunk_gated

    compute = torch.promote_types(x.dtype, torch.float32)
    k = (dt.to(compute)[..., None] * B.to(compute)).to(B.dtype)  # [b, T, H, K]
    g = dt.to(compute) * A.to(compute)  # [b, T, H]
    y, state = chunk_gated(C, k, x, g, scale=1.0, initial_state=initial_state,
                           output_final_state=output_final_state, cu_seqlens=cu_seqlens, engine=engine)
    if D is not None:
        y = (y.to(compute) + D.to(compute)[:, None] * x.to(compute)).to(y.dtype)
    return y, state
