"""Local (sliding-window) causal softmax attention, Griffin's local attention (De et al. 2024):

    o_t = sum_s softmax_s(scale q_t . k_s) v_s   over   t - window < s <= t   (within t's sequence)

q, k, v: [B, T, H, Dh]. Training runs it blocked: blocks of `window` queries, each attending its own
block and the one before (2 * window keys) under the band mask, one batched attention over all blocks:
O(T * window * Dh) work and O(T * window) scores per head, not O(T^2). Packed sequences (cu_seqlens) add
a same-sequence mask. Decoding keeps the last `window` keys and values in a ring buffer (the local
attention mixer, models/griffin.py): constant memory, O(window * Dh) per token and head. naive.py is the
dense masked T x T attention.
"""

from __future__ import annotations

from alloyml.kernels.local_attn.naive import naive_local_attn


def local_attn(q, k, v, window: int, *, scale=None, cu_seqlens=None, backend="auto"):
    """Sliding-window causal attention. q, k, v: [B, T, H, Dh]; window: keys per query (itself and the
    window - 1 before it), a positive int; scale: default Dh ** -0.5; cu_seqlens: int64 offsets [N + 1]
    of packed sequences in a batch of one; backend: "naive" (dense masked attention) or any other name
    in checks.BACKENDS (the blocked form, any device). Returns o: [B, T, H, Dh] in q's dtype; the
    softmax runs in float32 for half inputs (float64 for float64)."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common import checks

    B, T, H, K, V = checks.check_qkv(q, k, v)
    checks.check_cu_seqlens(cu_seqlens, B, T)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise InvalidInputError(f"window must be a positive integer, got {window!r}")
    scale = checks.default_scale(scale, K)
    if checks.diagonal_backend(backend) == "naive":
        return naive_local_attn(q, k, v, window, scale=scale, cu_seqlens=cu_seqlens)
    return _blocked(q, k, v, window, scale, cu_seqlens)


def band_mask(q_pos, k_pos, window: int):
    """True where a query at q_pos may see a key at k_pos: k_pos in (q_pos - window, q_pos], k_pos >= 0."""
    return (k_pos <= q_pos) & (k_pos > q_pos - window) & (k_pos >= 0)


def _blocked(q, k, v, window, scale, cu_seqlens):
    import torch
    import torch.nn.functional as F

    B, T = q.shape[:2]
    dtype, f = q.dtype, torch.promote_types(q.dtype, torch.float32)
    L = min(window, T)  # block size; with window >= T one block holds every key a query can see
    nb = -(-T // L)
    pad = nb * L - T
    q, k, v = (F.pad(t.to(f), (0, 0, 0, 0, 0, pad)) for t in (q, k, v))  # [B, nb L, H, Dh]
    k, v = (F.pad(t, (0, 0, 0, 0, L, 0)) for t in (k, v))  # a zero block in front: block b sees b - 1, b
    kw, vw = (t.unfold(1, 2 * L, L).permute(0, 1, 2, 4, 3) for t in (k, v))  # [B, nb, H, 2L, Dh]
    qb = q.unflatten(1, (nb, L)).transpose(2, 3)  # [B, nb, H, L, Dh]
    device = q.device
    q_pos = torch.arange(nb * L, device=device).view(nb, L, 1)
    k_pos = (torch.arange(nb, device=device)[:, None] * L - L + torch.arange(2 * L, device=device)).view(nb, 1, 2 * L)
    mask = band_mask(q_pos, k_pos, window)  # [nb, L, 2L]
    if cu_seqlens is not None:
        first = torch.zeros(nb * L, dtype=torch.long, device=device)
        first[cu_seqlens[:-1]] = 1
        doc = torch.cumsum(first, 0)  # padding positions join the last sequence; only padding sees them
        mask = mask & (doc[q_pos] == doc[k_pos.clamp(min=0)])
    o = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=mask[:, None], scale=scale)  # [B, nb, H, L, Dh]
    return o.transpose(2, 3).flatten(1, 2)[:, :T].to(dtype)


__all__ = ["band_mask", "local_attn", "naive_local_attn"]
