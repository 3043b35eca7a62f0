"""Sliding-window causal attention as dense masked attention, written out (scores, mask, softmax, sum):
the reference for the blocked form and the ring-buffer decoding."""

from __future__ import annotations


def naive_local_attn(q, k, v, window: int, *, scale: float, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.local_attn`; float32 (float64 for float64 inputs)."""
    import torch

    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    f = compute_dtype(q.dtype)

    def run(q, k, v, initial_state):
        T = q.shape[1]
        t = torch.arange(T, device=q.device)
        lag = t[:, None] - t[None, :]
        allowed = (lag >= 0) & (lag < window)  # [T (query), T (key)]
        scores = torch.einsum("bthd,bshd->bhts", q.to(f), k.to(f)) * scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        o = torch.einsum("bhts,bshd->bthd", torch.softmax(scores, dim=-1), v.to(f))
        return o.to(q.dtype), None

    o, _ = per_sequence(run, {"q": q, "k": k, "v": v}, None, False, cu_seqlens)
    return o
