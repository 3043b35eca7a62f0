"""S4D (Gu et al. 2022): a diagonal state space per channel, discretised by zero-order hold,

    A = -exp(A_real_log) + i A_imag,  A_bar = exp(dt A),  B_bar = (exp(dt A) - 1) / A   (B = 1, into C)
    x_t = A_bar x_{t-1} + B_bar u_t,  y_t = 2 Re(C x_t) + D u_t,

which is one long convolution y = K * u + D u with K_l = 2 Re(sum_n C_n B_bar_n A_bar_n^l). Training runs
the convolution by FFT (O(T log T) per channel after an O(T N) kernel); decoding the recurrence
(recurrent.py); packed sequences (cu_seqlens) the recurrence by the parallel scan of
common/diagonal_scan.py, where the state restarts at each boundary (a convolution would leak across).
naive.py is the reference loop; init.py the S4D-Lin and S4D-Inv initialisations.
"""

from __future__ import annotations

from alloyml.kernels.s4d.init import INITS, s4d_init
from alloyml.kernels.s4d.naive import naive_s4d


def check_s4d_inputs(u, log_dt, A_real_log, A_imag, C, D, state, n, token=False, state_name="state"):
    """u: [b, T, H] (or [b, H]); log_dt: [H]; A_real_log, A_imag: [H, N2]; C: [H, N2] complex or
    [H, N2, 2]; D: [H] or None; state: [n, H, N2] real or complex."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common.checks import check_tensor

    check_tensor("u", u, (None,) * (2 if token else 3), u)
    if not token and u.shape[1] == 0:
        raise InvalidInputError("u must hold at least one time step (T >= 1), got T = 0")
    H = u.shape[-1]
    check_tensor("log_dt", log_dt, (H,), u)
    check_tensor("A_real_log", A_real_log, (H, None), u)
    N2 = A_real_log.shape[1]
    check_tensor("A_imag", A_imag, (H, N2), u)
    check_tensor("C", C, (H, N2) if C.is_complex() else (H, N2, 2), u, allow_complex=True)
    if D is not None:
        check_tensor("D", D, (H,), u)
    if state is not None:
        check_tensor(state_name, state, (n, H, N2), u, allow_complex=True)


def _expm1_complex(z):
    """exp(z) - 1 without cancellation for small |z| (torch has no complex expm1):
    expm1(a + ib) = expm1(a) cos b - 2 sin^2(b / 2) + i exp(a) sin b."""
    import torch

    a, b = z.real, z.imag
    return torch.complex(torch.expm1(a) * torch.cos(b) - 2 * torch.sin(b / 2) ** 2, torch.exp(a) * torch.sin(b))


def s4d_coefficients(u, log_dt, A_real_log, A_imag, C):
    """(real dtype f, log A_bar = dt A, B_bar, C as complex): the ZOH discretisation in u's working
    precision (float32 for half inputs). B_bar = expm1(dt A) / A stays accurate for small dt |A|, where
    exp(dt A) - 1 in float32 would keep only a few digits."""
    import torch

    f = torch.promote_types(u.dtype, torch.float32)
    A = torch.complex(-A_real_log.to(f).exp(), A_imag.to(f))  # [H, N2]
    log_A_bar = log_dt.to(f).exp()[:, None] * A
    B_bar = _expm1_complex(log_A_bar) / A
    Cc = C.to(B_bar.dtype) if C.is_complex() else torch.complex(C[..., 0].to(f), C[..., 1].to(f))
    return f, log_A_bar, B_bar, Cc


def s4d(u, log_dt, A_real_log, A_imag, C, D=None, *, initial_state=None, output_final_state=True,
        cu_seqlens=None, backend="auto"):
    """The S4D layer's sequence map, y = K * u + D u, and its final state.

    u: [b, T, H] (H channels, one SSM each); log_dt: [H] log step sizes; A_real_log, A_imag: [H, N2]
    (N2 = N / 2 complex modes; Re A = -exp(A_real_log) < 0 for any real value, so every mode decays);
    C: [H, N2] complex or [H, N2, 2] (real, imaginary); D: [H] skip or None; initial_state: [n, H, N2]
    (n = b, or the number of packed sequences); cu_seqlens: int64 offsets [n + 1] of packed sequences in
    a batch of one; backend: "naive" (the reference loop) or any other name in checks.BACKENDS: the FFT
    convolution, or with cu_seqlens the parallel scan (both on any device; no Triton form).
    Returns (y: [b, T, H] in u's dtype, final_state: [n, H, N2] complex64 (complex128 for float64 input),
    or None when `output_final_state` is False). Half-precision inputs compute in float32."""
    from alloyml.kernels.common import checks

    checks.check_tensor("u", u, (None, None, None), u)
    b, T = u.shape[:2]
    n = checks.check_cu_seqlens(cu_seqlens, b, T)
    check_s4d_inputs(u, log_dt, A_real_log, A_imag, C, D, initial_state, n, state_name="initial_state")
    if checks.diagonal_backend(backend) == "naive":
        return naive_s4d(u, log_dt, A_real_log, A_imag, C, D, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    form = _s4d_fft if cu_seqlens is None else _s4d_scan
    y, state = form(u, log_dt, A_real_log, A_imag, C, initial_state, cu_seqlens)
    if D is not None:
        y = y + D.to(y.dtype) * u.to(y.dtype)
    return y.to(u.dtype), (state if output_final_state else None)


VANDERMONDE_CHUNK = 64  # powers a^l factor as a^(cL) a^j, j < L: two small tables and one matrix product


def vandermonde(w, log_a, T: int):
    """sum_n w[g, h, n] a[h, n]^l for l = 0 .. T-1, a = exp(log_a): [G, H, T] complex.

    w: [G, H, N2] complex; log_a: [H, N2] complex (Re <= 0). Writing l = cL + j, the sum is
    sum_n (w a^(cL))[g, h, n, c] (a^j)[h, n, j]: a batched matrix product over n, which only needs
    the [H, N2, T / L] and [H, N2, L] power tables instead of all T powers of every mode (the direct
    [H, N2, T] table is several passes over T * H * N2 complex numbers, forward and backward)."""
    import torch

    from alloyml.kernels.common.diagonal_scan import complex_exp

    L = min(VANDERMONDE_CHUNK, T)
    nc = -(-T // L)
    real = log_a.real.dtype
    outer = complex_exp(log_a[..., None] * (torch.arange(nc, device=log_a.device, dtype=real) * L))  # [H, N2, nc]
    inner = complex_exp(log_a[..., None] * torch.arange(L, device=log_a.device, dtype=real))  # [H, N2, L]
    out = torch.einsum("ghnc,hnj->ghcj", w[..., None] * outer, inner)  # [G, H, nc, L]
    return out.flatten(2)[..., :T]


def _s4d_fft(u, log_dt, A_real_log, A_imag, C, initial_state, cu_seqlens):
    """The convolution form: K from the Vandermonde sums of A_bar^l, y = K * u by a zero-padded FFT."""
    import torch
    import torch.nn.functional as F

    from alloyml.kernels.common.diagonal_scan import complex_exp

    f, log_A_bar, B_bar, Cc = s4d_coefficients(u, log_dt, A_real_log, A_imag, C)
    T = u.shape[1]
    K = 2 * vandermonde((Cc * B_bar)[None], log_A_bar, T)[0].real  # [H, T]
    size = 1 << (2 * T - 1).bit_length()  # >= 2T - 1: the circular convolution is the linear one
    uf = u.to(f)
    # along the last axis, time contiguous: pocketfft runs ~1.5x faster than over the strided time axis
    y = torch.fft.irfft(torch.fft.rfft(uf.transpose(1, 2), n=size) * torch.fft.rfft(K, n=size), n=size)
    y = y[..., :T].transpose(1, 2)
    # the final state: x_{T-1} = sum_r A_bar^r B_bar u_{T-1-r} (+ A_bar^T x0), r = cL + j as in vandermonde
    L = min(VANDERMONDE_CHUNK, T)
    nc = -(-T // L)
    u_rev = F.pad(uf.flip(1), (0, 0, 0, nc * L - T)).unflatten(1, (nc, L)).to(log_A_bar.dtype)  # [b, nc, L, H]
    steps = torch.arange(max(nc, L), device=u.device, dtype=f)
    inner = complex_exp(log_A_bar[..., None] * steps[:L])  # [H, N2, L]
    outer = complex_exp(log_A_bar[..., None] * (steps[:nc] * L))  # [H, N2, nc]
    per_chunk = torch.einsum("bcjh,hnj->bhnc", u_rev, inner)  # one matrix product per channel
    state = B_bar * (per_chunk * outer).sum(-1)
    if initial_state is not None:
        x0 = initial_state.to(log_A_bar.dtype)
        y = y + 2 * vandermonde(Cc * x0 * log_A_bar.exp(), log_A_bar, T).real.transpose(1, 2)  # A_bar^(t+1) x0
        state = state + complex_exp(T * log_A_bar) * x0
    return y, state


def _s4d_scan(u, log_dt, A_real_log, A_imag, C, initial_state, cu_seqlens):
    """The recurrence by the parallel scan over packed sequences (the carry cut at each start)."""
    from alloyml.kernels.common.diagonal_scan import diagonal_scan, final_states, fold_initial_state, starts_mask

    f, log_A_bar, B_bar, Cc = s4d_coefficients(u, log_dt, A_real_log, A_imag, C)
    T = u.shape[1]
    log_a = log_A_bar.expand(1, T, *log_A_bar.shape)  # [1, T, H, N2]
    inputs = B_bar * u.to(f)[..., None]  # [b, T, H, N2]
    inputs = fold_initial_state(log_a, inputs, None if initial_state is None else initial_state.to(inputs.dtype),
                                cu_seqlens)
    x = diagonal_scan(log_a, inputs, starts_mask(cu_seqlens, T, u.device))
    return 2 * (Cc * x).sum(-1).real, final_states(x, cu_seqlens)


from alloyml.kernels.s4d.recurrent import s4d_step  # noqa: E402  (it imports the helpers above)

__all__ = ["INITS", "check_s4d_inputs", "naive_s4d", "s4d", "s4d_coefficients", "s4d_init", "s4d_step"]
