"""Mamba-1's selective state-space scan, S6 (Gu & Dao 2023): a per-channel state of N entries with its own
decay rate per entry (A: [D, N]), and input-dependent step dt, B and C,

    h_t = exp(dt_t A) * h_{t-1} + dt_t x_t B_t    (h: [D, N] per sequence),
    y_t = C_t h_t + D x_t,   y <- y * silu(z)    (the block's gate, optional).

Unlike Mamba-2's SSD (selective_scan/) the decay differs along N, so there is no matrix-product form; the
fast path is the chunked scan of common/scan_autograd.py over the D x N channels, one autograd node with
a reverse-scan backward (O(T) work and memory per channel). naive.py is the reference loop, recurrent.py
the one-token step.
"""

from __future__ import annotations

from alloyml.kernels.s6.naive import naive_s6


def check_s6_inputs(x, dt, A, B, C, D, z, state, n, token=False, state_name="state"):
    """x, dt, z: [b, T, D] (or [b, D]); A: [D, N]; B, C: [b, T, N] (or [b, N]); D: [D]; state: [n, D, N]."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common.checks import check_tensor

    check_tensor("x", x, (None,) * (2 if token else 3), x)
    if not token and x.shape[1] == 0:
        raise InvalidInputError("x must hold at least one time step (T >= 1), got T = 0")
    check_tensor("dt", dt, tuple(x.shape), x)
    check_tensor("A", A, (x.shape[-1], None), x)
    N = A.shape[1]
    check_tensor("B", B, (*x.shape[:-1], N), x)
    check_tensor("C", C, (*x.shape[:-1], N), x)
    if D is not None:
        check_tensor("D", D, (x.shape[-1],), x)
    if z is not None:
        check_tensor("z", z, tuple(x.shape), x)
    if state is not None:
        check_tensor(state_name, state, (n, x.shape[-1], N), x)


def s6(x, dt, A, B, C, D=None, z=None, *, initial_state=None, output_final_state=True, cu_seqlens=None,
       backend="auto"):
    """Mamba-1's selective scan.

    x: [b, T, D]; dt: [b, T, D] step sizes, already softplus'ed (> 0); A: [D, N] negative rates (small and
    checked on CPU where reading it is free); B, C: [b, T, N] shared by all channels; D: [D] skip or None;
    z: [b, T, D] gate or None; initial_state: [n, D, N] (n = b, or the number of packed sequences);
    cu_seqlens: int64 offsets [n + 1] of packed sequences in a batch of one (the state restarts at each);
    backend: "naive" (the reference loop); "auto" / "triton" / "triton_recurrent" on CUDA: the Triton
    kernels of triton_scan.py (unpacked batches; packed ones and float64 run the scan); any other name,
    or any name off CUDA, the chunked scan (any device).
    Returns (y: [b, T, D] in x's dtype, final_state: [n, D, N] float32 (float64 for float64 input), or
    None when `output_final_state` is False). dt, A and the state stay in float32 for half inputs."""
    import math

    import torch
    import torch.nn.functional as F

    from alloyml.kernels.common import checks
    from alloyml.kernels.common.diagonal_scan import final_states, fold_initial_state, starts_mask
    from alloyml.kernels.common.scan_autograd import linear_scan

    checks.check_tensor("x", x, (None, None, None), x)
    b, T = x.shape[:2]
    n = checks.check_cu_seqlens(cu_seqlens, b, T)
    check_s6_inputs(x, dt, A, B, C, D, z, initial_state, n, state_name="initial_state")
    checks.check_range("A", A, -math.inf, 0.0, low_open=False)
    if checks.diagonal_backend(backend) == "naive":
        return naive_s6(x, dt, A, B, C, D, z, initial_state=initial_state, output_final_state=output_final_state,
                        cu_seqlens=cu_seqlens)
    if _use_triton(x, backend, cu_seqlens):
        from alloyml.kernels.s6.triton_scan import s6_triton

        y, final = s6_triton(x, dt, A, B, C, D, z, initial_state)
        return y, (final if output_final_state else None)
    f = torch.promote_types(x.dtype, torch.float32)
    xf, dtf = x.to(f), dt.to(f)
    log_a = dtf[..., None] * A.to(f)  # [b, T, D, N]
    inputs = (dtf * xf)[..., None] * B.to(f)[:, :, None, :]
    inputs = fold_initial_state(log_a, inputs, None if initial_state is None else initial_state.to(f), cu_seqlens)
    h = linear_scan(log_a, inputs, None if cu_seqlens is None else starts_mask(cu_seqlens, T, x.device))
    y = torch.einsum("btdn,btn->btd", h, C.to(f))
    if D is not None:
        y = y + D.to(f) * xf
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(x.dtype), (final_states(h, cu_seqlens) if output_final_state else None)


def _use_triton(x, backend: str, cu_seqlens) -> bool:
    """The Triton kernels (triton_scan.py) for unpacked float32 / half CUDA tensors under "auto" or a
    Triton backend name, and on CPU under a Triton name with TRITON_INTERPRET=1 (the interpreter tests);
    packed batches and float64 keep the scan. A Triton name on plain CPU also keeps the scan, so that a
    model configured for Triton still runs here."""
    import os

    import torch

    from alloyml.kernels.common.checks import TRITON_BACKENDS

    if cu_seqlens is not None or x.dtype == torch.float64:
        return False
    if x.is_cuda:
        return backend == "auto" or backend in TRITON_BACKENDS
    return backend in TRITON_BACKENDS and os.environ.get("TRITON_INTERPRET") == "1"


from alloyml.kernels.s6.recurrent import s6_step  # noqa: E402  (it imports the checks above)

__all__ = ["check_s6_inputs", "naive_s6", "s6", "s6_step"]
