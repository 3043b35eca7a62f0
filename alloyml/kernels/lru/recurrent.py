"""The LRU, one token at a time (decoding)."""

from __future__ import annotations


def lru_step(x, nu_log, theta_log, gamma_log=None, state=None):
    """One step of h_t = lambda h_{t-1} + gamma x_t.

    x: [b, N] real or complex; nu_log, theta_log, gamma_log: [N] (gamma_log None: gamma = sqrt(1 - |lambda|^2));
    state: [b, N] or None (zeros). Returns (h, h): the output is the new state, [b, N] complex64 (complex128
    for float64 / complex128 input)."""
    from alloyml.kernels.lru import check_lru_inputs
    from alloyml.kernels.lru.params import complex_dtype, lru_coefficients, real_dtype

    check_lru_inputs(x, nu_log, theta_log, gamma_log, state, x.shape[0], token=True)
    r = real_dtype(x)
    lam, gamma = lru_coefficients(nu_log, theta_log, gamma_log, r)
    h = gamma * x.to(complex_dtype(r))
    if state is not None:
        h = h + lam * state.to(h.dtype)
    return h, h
