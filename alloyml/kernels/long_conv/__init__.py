"""Causal long convolution with a filter as long as the sequence (Hyena's long convolutions, Poli et al. 2023):

    y_t = sum_{l=0}^{P+t} h_l x_{P+t-l} + D u_t,   x = [past, u]   (P past inputs before u)

per channel. Training runs it by FFT (zero-padded to >= 2(P + T) - 1, so the circular convolution is the
linear one): O((P + T) log(P + T)) per channel. There is no fixed-size state: continuing a sequence needs
its past inputs, so the "state" is the cache of every input seen so far, `[n, P + T, C]`, and one
decoding step (recurrent.py) costs O(P) per channel and grows the cache by one row (a distilled
state-space form, distill.py, decodes in constant memory instead). Packed sequences (cu_seqlens) are
scattered right-aligned into one zero-padded row each (device index ops, no host sync), convolved,
and gathered back; the rows are their final caches. naive.py is the direct sum.
"""

from __future__ import annotations

from alloyml.kernels.long_conv.naive import naive_long_conv


def check_long_conv_inputs(u, h, D, past, n, token=False, past_name="initial_inputs"):
    """u: [b, T, C] (or [b, C]); h: [L, C] with L >= P + T (P past inputs); D: [C] or None;
    past: [n, P, C] or None."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common.checks import check_tensor

    check_tensor("u", u, (None,) * (2 if token else 3), u)
    if not token and u.shape[1] == 0:
        raise InvalidInputError("u must hold at least one time step (T >= 1), got T = 0")
    C = u.shape[-1]
    check_tensor("h", h, (None, C), u)
    if D is not None:
        check_tensor("D", D, (C,), u)
    P = 0
    if past is not None:
        check_tensor(past_name, past, (n, None, C), u)
        P = past.shape[1]
    need = P + (1 if token else u.shape[1])
    if h.shape[0] < need:
        raise InvalidInputError(f"h must hold at least P + T = {need} taps (lags 0 .. {need - 1}), got {h.shape[0]}")


def long_conv(u, h, D=None, *, initial_inputs=None, output_final_state=True, cu_seqlens=None, backend="auto"):
    """The causal long convolution of u with the filter h (tap l weights the input l steps back).

    u: [b, T, C]; h: [L, C], L >= P + T (extra taps are unused); D: [C] skip or None; initial_inputs:
    [n, P, C], the inputs before u (left-padded with zeros for shorter sequences: a zero input adds
    nothing), not allowed with cu_seqlens; cu_seqlens: int64 offsets [n + 1] of packed sequences in a batch
    of one; backend: "naive" (the direct sum) or any other name in checks.BACKENDS (the FFT form, any device).
    Returns (y: [b, T, C] in u's dtype, final inputs: [n, P + T, C] in u's dtype (packed: [n, T, C], each
    row right-aligned after zeros), or None when `output_final_state` is False). The products and sums run
    in float32 for half inputs (float64 for float64)."""
    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common import checks

    checks.check_tensor("u", u, (None, None, None), u)
    b, T = u.shape[:2]
    n = checks.check_cu_seqlens(cu_seqlens, b, T)
    if cu_seqlens is not None and initial_inputs is not None:
        raise InvalidInputError("packed sequences (cu_seqlens) start fresh: initial_inputs must be None")
    check_long_conv_inputs(u, h, D, initial_inputs, n)
    if checks.diagonal_backend(backend) == "naive":
        return naive_long_conv(u, h, D, initial_inputs=initial_inputs, output_final_state=output_final_state,
                               cu_seqlens=cu_seqlens)
    if cu_seqlens is None:
        y, final = _fft_conv(u, h, initial_inputs)
    else:
        y, final = _fft_conv_packed(u, h, cu_seqlens)
    if D is not None:
        y = y + D.to(y.dtype) * u.to(y.dtype)
    return y.to(u.dtype), (final if output_final_state else None)


def fft_causal_conv(x, h):
    """x: [b, S, C], h: [>= S, C] -> the causal convolution [b, S, C] by a zero-padded real FFT, in the
    working precision of x (float32 for half inputs)."""
    import torch

    f = torch.promote_types(x.dtype, torch.float32)
    S = x.shape[1]
    size = 1 << (2 * S - 1).bit_length()  # >= 2S - 1
    xf = torch.fft.rfft(x.to(f), n=size, dim=1)
    hf = torch.fft.rfft(h[:S].to(f), n=size, dim=0)
    return torch.fft.irfft(xf * hf, n=size, dim=1)[:, :S]


def _fft_conv(u, h, past):
    import torch

    x = u if past is None else torch.cat([past.to(u.dtype), u], dim=1)  # [b, P + T, C]
    return fft_causal_conv(x, h)[:, x.shape[1] - u.shape[1]:], x


def _fft_conv_packed(u, h, cu_seqlens):
    """One right-aligned zero-padded row per packed sequence ([n, T, C]), the FFT convolution of the rows,
    each position read back from its row."""
    import torch

    T = u.shape[1]
    n = cu_seqlens.numel() - 1
    steps = torch.arange(T, device=u.device)
    first = torch.zeros(T, dtype=torch.long, device=u.device)
    first[cu_seqlens[:-1]] = 1
    doc = torch.cumsum(first, 0) - 1  # [T]: each position's sequence
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # [n]
    column = T - lengths[doc] + steps - cu_seqlens[:-1][doc]  # right-aligned in its row
    rows = u.new_zeros(n, T, u.shape[-1]).index_put((doc, column), u[0])
    y = fft_causal_conv(rows, h)  # [n, T, C]
    return y[doc, column][None], rows


from alloyml.kernels.long_conv.recurrent import long_conv_step  # noqa: E402  (it imports the helpers above)

__all__ = ["check_long_conv_inputs", "fft_causal_conv", "long_conv", "long_conv_step", "naive_long_conv"]
