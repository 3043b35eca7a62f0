"""Mamba-1's selective scan (S6) as a plain loop over time, written from the paper's equations: the
ground truth for the parallel scan and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_s6(x, dt, A, B, C, D=None, z=None, *, initial_state=None, output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.s6`. Computes in float32, or float64 for float64 inputs.

    Gu & Dao (2023), Algorithm 2 with the discretisation of their section 3 (zero-order hold on A, Euler
    on B, as the reference implementation does), per channel d and state index n:
        A_bar_t = exp(dt_t,d A_d,n),   B_bar_t = dt_t,d B_t,n
        h_t = A_bar_t h_{t-1} + B_bar_t x_t,d,    y_t,d = sum_n C_t,n h_t,d,n + D_d x_t,d
    and the gate of the Mamba block, y * silu(z), when z is given."""
    import torch

    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    def run(x, dt, B, C, z, initial_state):
        b, T, Dm = x.shape
        f = compute_dtype(x.dtype)
        Af = A.to(f)
        h = torch.zeros(b, *A.shape, dtype=f, device=x.device) if initial_state is None else initial_state.to(f)
        outs = []
        for t in range(T):
            x_t, dt_t, B_t, C_t = x[:, t].to(f), dt[:, t].to(f), B[:, t].to(f), C[:, t].to(f)
            h = torch.exp(dt_t[..., None] * Af) * h + (dt_t * x_t)[..., None] * B_t[:, None, :]
            y_t = (h * C_t[:, None, :]).sum(-1)
            if D is not None:
                y_t = y_t + D.to(f) * x_t
            if z is not None:
                z_t = z[:, t].to(f)
                y_t = y_t * z_t * torch.sigmoid(z_t)
            outs.append(y_t)
        return torch.stack(outs, dim=1).to(x.dtype), h

    inputs = {"x": x, "dt": dt, "B": B, "C": C, "z": z}
    if z is None:
        return per_sequence(lambda x, dt, B, C, initial_state: run(x, dt, B, C, None, initial_state),
                            {k: v for k, v in inputs.items() if k != "z"}, initial_state, output_final_state,
                            cu_seqlens)
    return per_sequence(run, inputs, initial_state, output_final_state, cu_seqlens)
