"""The LRU as a plain loop over time, written from the paper's equations: the ground truth for the parallel
scan and the decode step (it shares no code with either)."""

from __future__ import annotations


def naive_lru(x, nu_log, theta_log, gamma_log=None, *, initial_state=None, output_final_state=True,
              cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.lru`. Computes in complex64, or complex128 for float64 /
    complex128 inputs.

    Orvieto et al. (2023), eq. (3) and section 3.3, for one channel n:
        lambda_n = exp(-exp(nu_log_n) + i exp(theta_log_n))
        gamma_n  = exp(gamma_log_n), or sqrt(1 - |lambda_n|^2) when gamma_log is None
        h_t = lambda * h_{t-1} + gamma * x_t"""
    import torch

    from alloyml.kernels.common.naive import per_sequence

    real = x.real.dtype if x.is_complex() else x.dtype
    c = torch.complex128 if real == torch.float64 else torch.complex64
    r = torch.float64 if c == torch.complex128 else torch.float32
    modulus = torch.exp(-torch.exp(nu_log.to(r)))
    angle = torch.exp(theta_log.to(r))
    lam = torch.complex(modulus * torch.cos(angle), modulus * torch.sin(angle))
    if gamma_log is None:
        gamma = torch.sqrt(1 - modulus**2).to(c)
    else:
        gamma = torch.exp(gamma_log.to(r)).to(c)

    def run(x, initial_state):
        b, T, N = x.shape
        h = torch.zeros(b, N, dtype=c, device=x.device) if initial_state is None else initial_state.to(c)
        outs = []
        for x_t in x.to(c).unbind(1):
            h = lam * h + gamma * x_t
            outs.append(h)
        return torch.stack(outs, dim=1), h

    return per_sequence(run, {"x": x}, initial_state, output_final_state, cu_seqlens)
