"""S4D as a plain loop over time, written from the paper's equations: the ground truth for the FFT
convolution, the parallel scan and the decode step (it shares no code with any)."""

from __future__ import annotations


def naive_s4d(u, log_dt, A_real_log, A_imag, C, D=None, *, initial_state=None, output_final_state=True,
              cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.s4d`. Computes in float32 / complex64, or float64 /
    complex128 for float64 inputs.

    Gu et al. (2022), "On the Parameterization and Initialization of Diagonal State Space Models", with
    B = 1 (absorbed into C) and zero-order hold, per channel h and mode n:
        A = -exp(A_real_log) + i A_imag,   dt = exp(log_dt)
        A_bar = exp(dt A),   B_bar = (exp(dt A) - 1) / A
        x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(sum_n C_n x_t,n) + D u_t
    (the factor 2: each mode stands for itself and its complex conjugate)."""
    import torch

    from alloyml.kernels.common.naive import compute_dtype, per_sequence

    f = compute_dtype(u.dtype)
    cf = torch.complex128 if f == torch.float64 else torch.complex64
    A = torch.complex(-torch.exp(A_real_log.to(f)), A_imag.to(f))  # [H, N2]
    dt = torch.exp(log_dt.to(f))[:, None]
    A_bar = torch.exp(dt * A)
    B_bar = (torch.exp(dt * A) - 1) / A
    Cc = C.to(cf) if C.is_complex() else torch.complex(C[..., 0].to(f), C[..., 1].to(f))

    def run(u, initial_state):
        b, T, H = u.shape
        x = torch.zeros(b, *A.shape, dtype=cf, device=u.device) if initial_state is None else initial_state.to(cf)
        outs = []
        for u_t in u.to(f).unbind(1):
            x = A_bar * x + B_bar * u_t[..., None]
            y_t = 2 * (Cc * x).sum(-1).real
            if D is not None:
                y_t = y_t + D.to(f) * u_t
            outs.append(y_t)
        return torch.stack(outs, dim=1).to(u.dtype), x

    return per_sequence(run, {"u": u}, initial_state, output_final_state, cu_seqlens)
