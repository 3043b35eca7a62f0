"""The diagonal linear recurrence h_t = a_t * h_{t-1} + b_t (elementwise), solved in parallel over time.

This is the engine of the state-space ops whose state is a vector of independent channels (LRU, RG-LRU,
S4D's recurrent form): unlike the matrix-state recurrence of chunk.py there is no matrix product to
batch, so the scan is done by recursive doubling (Hillis & Steele 1986). After round j every position
holds the composition of the 2^j steps ending there, (a_t ... a_{t-2^j+1}, the state those steps build
from zero); ceil(log2 T) rounds of whole-tensor multiply-adds give every h_t. Work O(T log T) per
channel, depth O(log T), no Python loop over T, and only products of decays (|a| <= 1 in every use)
and sums: nothing is divided by a decay, so nothing overflows however fast a channel forgets.


Packed sequences: a_t = 0 at a sequence's first step cuts the carry from the previous sequence exactly;
an initial state enters as a * h0 added to that step's input.
Works for real and complex tensors; autograd runs through the rounds.
"""

from __future__ import annotations


def starts_mask(cu_seqlens, T: int, device):
    """[T] bool, True at each packed sequence's first step (device ops only: no host sync)."""
    import torch

    first = torch.zeros(T, dtype=torch.bool, device=device)
    first[cu_seqlens[:-1]] = True
    return first


def fold_initial_state(log_a, b, initial_state, cu_seqlens):
    """b with the initial state moved into each sequence's first input: h_start = a_start h0 + b_start.

    log_a: [B or 1, T, ...] log-decays (broadcast over the batch allowed); b: [B, T, ...] inputs;
    initial_state: [n, ...] (n = B, or the number of packed sequences) or None."""
    import torch

    if initial_state is None:
        return b
    if cu_seqlens is None:
        return torch.cat([b[:, :1] + log_a[:, :1].exp() * initial_state[:, None], b[:, 1:]], dim=1)
    starts = cu_seqlens[:-1]
    carry = log_a.expand(b.shape)[0].index_select(0, starts).exp() * initial_state  # [n, ...]
    return b.index_add(1, starts, carry[None])


def diagonal_scan(log_a, b, first=None):
    """All states h_t = a_t h_{t-1} + b_t from h_{-1} = 0, along axis 1, with a_t = exp(log_a_t).

    log_a: [B or 1, T, ...] (real, or complex for rotating decays; Re <= 0 keeps |a| <= 1); b: [B, T, ...];
    first: [T] bool or None, True where the carry is cut (a packed sequence's first step: a_t = 0 there).
    Returns h: [B, T, ...] (b's shape, the promoted dtype of a and b).

    Each round keeps, per position, the log of its block's decay product as a sum of logs (and whether the
    block crosses a cut) rather than the product itself: repeated products of decays near 1 would lose
    the small distance from 1 that long-memory channels live on (a float32 0.9999 is only 4 digits of
    1 - a), while a sum of logs and one exp keep full relative precision."""
    import torch

    T = b.shape[1]
    log_a = log_a.expand(b.shape) if log_a.shape != b.shape else log_a
    cut = None if first is None else first.view(1, T, *([1] * (b.dim() - 2)))
    k = 1
    while k < T:
        # position t absorbs the block ending at t - k: H_t <- H_t + A_t H_{t-k}, A_t = exp(log A_t)
        A = complex_exp(log_a[:, k:])
        if cut is not None:
            A = torch.where(cut[:, k:], torch.zeros((), dtype=A.dtype, device=A.device), A)
        b = torch.cat([b[:, :k], b[:, k:] + A * b[:, :-k]], dim=1)
        if 2 * k < T:  # the last round's block decays would go unused
            log_a = torch.cat([log_a[:, :k], log_a[:, k:] + log_a[:, :-k]], dim=1)
            if cut is not None:
                cut = torch.cat([cut[:, :k], cut[:, k:] | cut[:, :-k]], dim=1)
        k *= 2
    return b


def complex_exp(z):
    """exp for real or complex z; complex from real exp, cos and sin, which PyTorch's CPU kernels vectorise
    (its complex exp runs ~15x slower; torch.polar's backward divides by the modulus, NaN once it
    underflows to 0)."""
    import torch

    if not z.is_complex():
        return z.exp()
    r = z.real.exp()
    return torch.complex(r * torch.cos(z.imag), r * torch.sin(z.imag))


def final_states(h, cu_seqlens):
    """Each sequence's last state: h[:, -1], or with cu_seqlens the state at each packed end ([n, ...])."""
    if cu_seqlens is None:
        return h[:, -1]
    return h[0].index_select(0, cu_seqlens[1:] - 1)
