"""The causal long convolution, one token at a time (decoding): the new input joins the cache of past
inputs and the output is the filter's dot product with the whole cache, O(P) per channel for P cached
inputs (the cache grows by one row a step)."""

from __future__ import annotations


def long_conv_step(u, h, D=None, cache=None):
    """u: [b, C] the new input; h: [L, C], L >= P + 1; D: [C] or None; cache: [b, P, C] the past inputs
    (None: none). Returns (y: [b, C] in u's dtype, new cache [b, P + 1, C])."""
    import torch

    from alloyml.kernels.long_conv import check_long_conv_inputs

    check_long_conv_inputs(u, h, D, cache, u.shape[0], token=True, past_name="cache")
    f = torch.promote_types(u.dtype, torch.float32)
    x = u[:, None] if cache is None else torch.cat([cache.to(u.dtype), u[:, None]], dim=1)  # [b, P + 1, C]
    S = x.shape[1]
    y = torch.einsum("bsc,sc->bc", x.to(f), h[:S].flip(0).to(f))  # tap l meets x_{S-1-l}
    if D is not None:
        y = y + D.to(f) * u.to(f)
    return y.to(u.dtype), x
