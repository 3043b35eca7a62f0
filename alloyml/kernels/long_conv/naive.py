"""The causal long convolution as a direct sum over lags, one output at a time: the ground truth for the
FFT form and the decoding step (it shares no code with either)."""

from __future__ import annotations


def naive_long_conv(u, h, D=None, *, initial_inputs=None, output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.long_conv`; float32 (float64 for float64 inputs).

    y_t = sum_{l=0}^{P+t} h_l x_{P+t-l} + D u_t with x the past inputs followed by u."""
    import torch

    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    f = compute_dtype(u.dtype)

    def run(u, initial_state):
        x = u if initial_state is None else torch.cat([initial_state.to(u.dtype), u], dim=1)
        P = x.shape[1] - u.shape[1]
        xf, hf = x.to(f), h.to(f)
        outs = []
        for t in range(u.shape[1]):
            s = P + t  # index of u_t in x
            y_t = (hf[: s + 1].flip(0) * xf[:, : s + 1]).sum(1)  # lag l meets x_{s-l}
            if D is not None:
                y_t = y_t + D.to(f) * u[:, t].to(f)
            outs.append(y_t)
        return torch.stack(outs, dim=1).to(u.dtype), x

    if cu_seqlens is None:
        return per_sequence(run, {"u": u}, initial_inputs, output_final_state, None)
    y, _ = per_sequence(run, {"u": u}, None, False, cu_seqlens)
    final = None
    if output_final_state:  # each sequence's inputs, right-aligned in a row of T
        T = u.shape[1]
        bounds = cu_seqlens.tolist()
        final = torch.stack([torch.nn.functional.pad(u[0, a:b], (0, 0, T - (b - a), 0))
                             for a, b in zip(bounds, bounds[1:], strict=False)])
    return y, final
