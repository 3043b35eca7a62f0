"""S4D, one token at a time (decoding): the recurrence its convolution kernel unrolls."""

from __future__ import annotations


def s4d_step(u, log_dt, A_real_log, A_imag, C, D=None, state=None):
    """One step of x_t = A_bar x_{t-1} + B_bar u_t, y_t = 2 Re(C x_t) + D u_t (zero-order hold).

    u: [b, H]; log_dt: [H]; A_real_log, A_imag: [H, N2]; C: [H, N2] complex or [H, N2, 2] real pairs;
    D: [H] or None; state: [b, H, N2] complex or None (zeros).
    Returns (y: [b, H] in u's dtype, new_state: [b, H, N2] complex64, complex128 for float64 input)."""
    from alloyml.kernels.s4d import check_s4d_inputs, s4d_coefficients

    check_s4d_inputs(u, log_dt, A_real_log, A_imag, C, D, state, u.shape[0], token=True)
    f, log_A_bar, B_bar, Cc = s4d_coefficients(u, log_dt, A_real_log, A_imag, C)
    x = B_bar * u.to(f)[..., None]
    if state is not None:
        x = x + log_A_bar.exp() * state.to(x.dtype)
    y = 2 * (Cc * x).sum(-1).real
    if D is not None:
        y = y + D.to(f) * u.to(f)
    return y.to(u.dtype), x
