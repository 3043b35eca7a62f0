"""The LRU's exponential parameterisation (Orvieto et al. 2023, section 3.3), shared by the scan and the
step: lambda = exp(-exp(nu_log) + i exp(theta_log)) lies strictly inside the unit disk for every real
(nu_log, theta_log), so no value of a trained parameter can make the recurrence unstable."""

from __future__ import annotations


def real_dtype(x):
    """The working real precision for input `x`: float32, or float64 for float64 / complex128 input."""
    import torch

    real = x.real.dtype if x.is_complex() else x.dtype
    return torch.promote_types(real, torch.float32)


def lru_coefficients(nu_log, theta_log, gamma_log, dtype):
    """(lambda, gamma): [N] complex in `dtype`'s precision. gamma = exp(gamma_log), or with gamma_log None
    the paper's normalisation sqrt(1 - |lambda|^2) (which keeps E|h|^2 = E|x|^2 for white input), computed
    as sqrt(-expm1(-2 exp(nu_log))) so that it stays accurate as |lambda| -> 1."""
    import torch

    nu, theta = nu_log.to(dtype).exp(), theta_log.to(dtype).exp()
    modulus = (-nu).exp()  # |lambda| = exp(-nu), arg lambda = theta (not torch.polar: NaN gradient at 0)
    lam = torch.complex(modulus * theta.cos(), modulus * theta.sin())
    if gamma_log is None:
        gamma = (-torch.expm1(-2 * nu)).sqrt()
    else:
        gamma = gamma_log.to(dtype).exp()
    return lam, gamma


def complex_dtype(real):
    """complex64 for float32, complex128 for float64."""
    import torch

    return torch.complex128 if real == torch.float64 else torch.complex64
