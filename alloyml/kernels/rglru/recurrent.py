"""The RG-LRU, one token at a time (decoding)."""

from __future__ import annotations


def rglru_step(x, r, i, Lambda, state=None, c=8.0):
    """One step of h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t), a_t = sigmoid(Lambda)^(c r_t).

    x, r, i: [b, D] (r, i: gate values in [0, 1]); Lambda: [D]; state: [b, D] or None (zeros).
    Returns (h in x's dtype, new_state float32, or float64 for float64 input)."""
    import torch

    from alloyml.kernels.rglru import check_rglru_inputs, rglru_coefficients

    check_rglru_inputs(x, r, i, Lambda, state, x.shape[0], token=True)
    f = torch.promote_types(x.dtype, torch.float32)
    log_a, scale = rglru_coefficients(r, Lambda, c, f)
    h = scale * (i.to(f) * x.to(f))
    if state is not None:
        h = h + log_a.exp() * state.to(f)
    return h.to(x.dtype), h
