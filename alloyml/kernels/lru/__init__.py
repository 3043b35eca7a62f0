"""The Linear Recurrent Unit's recurrence (Orvieto et al. 2023): a complex diagonal linear recurrence with
a stable exponential parameterisation and gamma normalisation,

    h_t = lambda * h_{t-1} + gamma * x_t,   lambda = exp(-exp(nu_log) + i exp(theta_log)),
    gamma = sqrt(1 - |lambda|^2) (or exp(gamma_log), the paper's trainable form initialised there),

with x_t = B u_t already projected (the layer's B, C and D are the mixer's). The fast form is the
chunked constant-decay scan of common/scan_autograd.py (O(T) per channel; packed sequences: the doubling
scan of common/diagonal_scan.py, O(T log T)); naive.py is the
reference loop, recurrent.py the one-token step.
"""

from __future__ import annotations

from alloyml.kernels.lru.naive import naive_lru
from alloyml.kernels.lru.recurrent import lru_step


def check_lru_inputs(x, nu_log, theta_log, gamma_log, state, n, token=False, state_name="state"):
    """x: [b, T, N] (or [b, N] for one token), real or complex; the log-parameters [N] real; state [n, N]."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common.checks import check_tensor

    check_tensor("x", x, (None,) * (2 if token else 3), x, allow_complex=True)
    if not token and x.shape[1] == 0:
        raise InvalidInputError("x must hold at least one time step (T >= 1), got T = 0")
    N = x.shape[-1]
    for name, p in (("nu_log", nu_log), ("theta_log", theta_log), ("gamma_log", gamma_log)):
        if p is not None:
            check_tensor(name, p, (N,), x)
    if state is not None:
        check_tensor(state_name, state, (n, N), x, allow_complex=True)


def lru(x, nu_log, theta_log, gamma_log=None, *, initial_state=None, output_final_state=True, cu_seqlens=None,
        backend="auto"):
    """All LRU states h_t = lambda h_{t-1} + gamma x_t.

    x: [b, T, N] real or complex (B u_t; half precision is fine: the recurrence runs in complex64);
    nu_log, theta_log: [N] real log-parameters (any real value is stable); gamma_log: [N] or None (None:
    gamma = sqrt(1 - |lambda|^2)); initial_state: [n, N] real or complex (n = b, or the number of packed
    sequences); cu_seqlens: int64 offsets [n + 1] of packed sequences in a batch of one (the state restarts
    from initial_state, or zeros, at each); backend: "naive" (the reference loop) or any other name in
    checks.BACKENDS for the parallel scan (it runs on any device; there is no Triton form).
    Returns (h: [b, T, N] complex64 (complex128 for float64 / complex128 input), final_state: [n, N] of
    that dtype, or None when `output_final_state` is False)."""
    import torch

    from alloyml.kernels.common import checks
    from alloyml.kernels.common.diagonal_scan import diagonal_scan, final_states, fold_initial_state, starts_mask
    from alloyml.kernels.common.scan_autograd import constant_decay_linear_scan
    from alloyml.kernels.lru.params import complex_dtype, lru_coefficients, real_dtype

    checks.check_tensor("x", x, (None, None, None), x, allow_complex=True)
    b, T = x.shape[:2]
    n = checks.check_cu_seqlens(cu_seqlens, b, T)
    check_lru_inputs(x, nu_log, theta_log, gamma_log, initial_state, n, state_name="initial_state")
    if checks.diagonal_backend(backend) == "naive":
        return naive_lru(x, nu_log, theta_log, gamma_log, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    r = real_dtype(x)
    c = complex_dtype(r)
    _, gamma = lru_coefficients(nu_log, theta_log, gamma_log, r)
    log_lam = torch.complex(-nu_log.to(r).exp(), theta_log.to(r).exp()).expand(1, T, -1)  # log lambda, every step
    bx = fold_initial_state(log_lam, gamma * x.to(c), None if initial_state is None else initial_state.to(c),
                            cu_seqlens)
    if cu_seqlens is None:  # one decay for all steps: the chunked scan with exact powers, one autograd node
        h = constant_decay_linear_scan(log_lam[0, 0], bx)
    else:  # resets at packed starts make the decay vary: the doubling scan with cuts
        h = diagonal_scan(log_lam, bx, starts_mask(cu_seqlens, T, x.device))
    return h, (final_states(h, cu_seqlens) if output_final_state else None)


__all__ = ["check_lru_inputs", "lru", "lru_step", "naive_lru"]
