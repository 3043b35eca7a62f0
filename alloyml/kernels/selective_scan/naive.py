"""The selective scan (Mamba-2's SSD form) as a plain recurrence over time, written from the paper's
equations: the ground truth for the chunked forms and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_selective_scan(x, dt, A, B, C, D=None, *, initial_state=None, output_final_state=True,
                         cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.selective_scan`. Computes in float32, or float64 for
    float64 inputs.

    Dao & Gu (2024), the SSM with a scalar A per head, discretised with step dt_t (zero-order hold on A,
    Euler on B, as Mamba does):
        A_bar_t = exp(dt_t A),    B_bar_t = dt_t B_t
        h_t = A_bar_t h_{t-1} + B_bar_t x_t^T    (h: [N, P], N = state size, P = head dim)
        y_t = h_t^T C_t + D x_t"""
    import torch

    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    def run(x, dt, B, C, initial_state):
        b, T, H, P = x.shape
        N = B.shape[-1]
        dtype, c = x.dtype, compute_dtype(x.dtype)
        h = x.new_zeros(b, H, N, P, dtype=c) if initial_state is None else initial_state.to(c)
        a_bar = (dt.to(c) * A.to(c)).exp()  # [b, T, H]
        outs = []
        for x_t, dt_t, a_t, B_t, C_t in zip(*(t.to(c).unbind(1) for t in (x, dt)), a_bar.unbind(1),
                                            *(t.to(c).unbind(1) for t in (B, C)), strict=True):
            b_bar = dt_t[..., None] * B_t  # [b, H, N]
            h = a_t[..., None, None] * h + b_bar[..., :, None] * x_t[..., None, :]  # [b, H, N, P]
            y_t = (C_t[..., None, :] @ h).squeeze(-2)  # [b, H, P]
            if D is not None:
                y_t = y_t + D.to(c)[:, None] * x_t
            outs.append(y_t)
        return torch.stack(outs, dim=1).to(dtype), h

    return per_sequence(run, {"x": x, "dt": dt, "B": B, "C": C}, initial_state, output_final_state, cu_seqlens)
