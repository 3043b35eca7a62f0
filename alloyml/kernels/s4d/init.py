"""S4D's initialisations of the diagonal A (Gu et al. 2022, section 4): both keep Re A = -1/2 and differ in
the imaginary parts, approximations of the HiPPO-LegS spectrum.

- S4D-Lin: A_n = -1/2 + i pi n (frequencies spaced linearly, as the Fourier basis of S4-FouT);
- S4D-Inv: A_n = -1/2 + i (N / pi) (N / (2n + 1) - 1) (the inverse law that the diagonal part of
  HiPPO-LegS's normal-plus-low-rank form follows),
for n = 0 .. N/2 - 1 (N the real state size; each complex mode stands for a conjugate pair)."""

from __future__ import annotations

INITS = ("lin", "inv")


def s4d_init(kind: str, H: int, N: int):
    """(A_real_log [H, N/2], A_imag [H, N/2]) float32 for `kind` in INITS, the same for every channel."""
    import math

    import torch

    from alloyml.errors import InvalidInputError

    if kind not in INITS:
        raise InvalidInputError(f"S4D init must be one of {INITS}, got {kind!r}")
    if N < 2 or N % 2:
        raise InvalidInputError(f"S4D state size N must be even and >= 2 (conjugate pairs), got {N}")
    n = torch.arange(N // 2, dtype=torch.float32)
    imag = math.pi * n if kind == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)
    return torch.full((H, N // 2), math.log(0.5)), imag.expand(H, -1).clone()
