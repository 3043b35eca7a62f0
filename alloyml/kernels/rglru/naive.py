"""The RG-LRU as a plain loop over time, written from the paper's equations: the ground truth for the
parallel scan and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_rglru(x, r, i, Lambda, c=8.0, *, initial_state=None, output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.rglru`. Computes in float32, or float64 for float64 inputs.

    De et al. (2024), eqs. (1)-(4), per channel:
        a   = sigmoid(Lambda)
        a_t = a ** (c r_t)
        h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)"""
    import torch

    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    def run(x, r, i, initial_state):
        b, T, D = x.shape
        dtype, f = x.dtype, compute_dtype(x.dtype)
        base = torch.sigmoid(Lambda.to(f))
        h = torch.zeros(b, D, dtype=f, device=x.device) if initial_state is None else initial_state.to(f)
        outs = []
        for x_t, r_t, i_t in zip(x.to(f).unbind(1), r.to(f).unbind(1), i.to(f).unbind(1), strict=True):
            a_t = base ** (c * r_t)
            h = a_t * h + torch.sqrt(1 - a_t**2) * (i_t * x_t)
            outs.append(h)
        return torch.stack(outs, dim=1).to(dtype), h

    return per_sequence(run, {"x": x, "r": r, "i": i}, initial_state, output_final_state, cu_seqlens)
