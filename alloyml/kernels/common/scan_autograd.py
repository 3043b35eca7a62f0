"""The real diagonal recurrence h_t = a_t h_{t-1} + b_t (a_t = exp(log_a_t)) as one autograd node with a
hand-written backward, for the per-step-decay ops (S6, RG-LRU) on CPU.

Why not autograd through a chunked loop of steps: its graph records every one of the L in-chunk steps
and their decays (about a dozen [B, T, M] tensors saved and replayed), which is most of its fwd+bwd cost.
Here the forward runs without a graph and saves only a and h; the backward is the same recurrence run
backwards in time,

    g_t = dL/dh_t + a_{t+1} g_{t+1}      (the gradient reaching h_t, g_T = 0),
    dL/db_t = g_t,   dL/dlog_a_t = g_t a_t h_{t-1}   (h_{-1} = 0: an initial state is folded into b_0).

Both directions use `forward_scan` (the backward with reverse=True): inside chunks of about sqrt(T) steps
(chunk_size) the steps run in order (in place, all chunks at once: a loop of L steps, not of T), the decay
since the chunk start is exp of a running sum of logs (no division by a decay, no long products), and the
state entering each chunk comes from a loop over the T / L chunk ends. Cuts (packed sequence starts) enter as
log_a = -inf, a = 0: nothing carries across.
"""

from __future__ import annotations

import torch


def chunk_size(T: int) -> int:
    """In-chunk steps for length T: about sqrt(T), which balances the L steps of the in-chunk loop against
    the T / L steps of the chunk-carry loop (each a few whole-tensor ops: for the small state of an LRU
    layer the per-op overhead is most of the cost), clamped to [16, 128] and to T."""
    import math

    return min(T, max(16, min(128, round(math.sqrt(T)))))


def _chunks(t, nc: int, L: int, copy: bool):
    """[B, T, M] -> [B, nc, L, M] (zero-padded at the end; a copy when asked or when padding is needed)."""
    import torch.nn.functional as F

    pad = nc * L - t.shape[1]
    if pad:
        t = F.pad(t, (0, 0, 0, pad))
    elif copy:
        t = t.clone(memory_format=torch.contiguous_format)
    return t.reshape(t.shape[0], nc, L, t.shape[-1])


def forward_scan(a, log_a, b, reverse: bool = False):
    """h from h_t = a_t h_{t-1} + b_t, h_{-1} = 0, along axis 1; with reverse, g from g_t = a_{t+1} g_{t+1} +
    b_t, g_T = 0 (the backward pass; the same a, read one step later). a = exp(log_a), log_a and b:
    [B, T, M] (same shape, real; log_a may hold -inf). Returns a new [B, T, M] tensor. The states and the
    running sums of log_a are both built by the in-chunk loop (a strided cumsum over the chunk axis
    measured several times slower), into fresh buffers: no shifted or cloned copies of a and log_a."""
    Bsz, T, M = b.shape
    L = chunk_size(T)
    nc = -(-T // L)
    h = _chunks(b, nc, L, copy=True)
    av = _chunks(a, nc, L, copy=False)
    la = _chunks(log_a, nc, L, copy=False)
    decay = torch.empty_like(h)  # log-decay from the chunk's start through s (reverse: from s to the next start)
    # the sums are accumulated in place, one slice at a time (add_ into a contiguous buffer: torch.add with
    # out= a strided slice measured 3x slower)
    if reverse:
        decay[:, :, : L - 1] = la[:, :, 1:]
        decay[:, :-1, L - 1] = la[:, 1:, 0]  # a chunk's last step reaches the next chunk's first state
        decay[:, -1, L - 1] = 0  # nothing enters from beyond the end
        for s in range(L - 2, -1, -1):
            h[:, :, s].addcmul_(av[:, :, s + 1], h[:, :, s + 1])
            decay[:, :, s].add_(decay[:, :, s + 1])
    else:
        decay.copy_(la)
        for s in range(1, L):
            h[:, :, s].addcmul_(av[:, :, s], h[:, :, s - 1])
            decay[:, :, s].add_(decay[:, :, s - 1])
    decay.exp_()
    edge = 0 if reverse else L - 1  # where a chunk hands its state to the next one
    carry = torch.zeros_like(h[:, 0, 0])
    entering = torch.empty_like(h[:, :, 0])
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        entering[:, c] = carry
        carry = torch.addcmul(h[:, c, edge], decay[:, c, edge], carry)
    h.addcmul_(decay, entering[:, :, None])
    return h.view(Bsz, nc * L, M)[:, :T]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_a, b):
        a = log_a.exp()
        h = forward_scan(a, log_a, b)
        ctx.save_for_backward(a, log_a, h)
        return h

    @staticmethod
    def backward(ctx, gh):
        a, log_a, h = ctx.saved_tensors
        g = forward_scan(a, log_a, gh, reverse=True)  # g_t = gh_t + a_{t+1} g_{t+1}
        # g a h_{t-1} in place on one new buffer (not out= a slice: torch.compile refuses strided out=);
        # h_{-1} = 0: nothing at t = 0
        g_log_a = g * a
        g_log_a[:, 1:].mul_(h[:, :-1])
        g_log_a[:, 0] = 0
        return g_log_a, g


def linear_scan(log_a, b, first=None):
    """For real tensors: all h_t = a_t h_{t-1} + b_t
    from zero along axis 1, a_t = exp(log_a_t); log_a: [B or 1, T, ...], b: [B, T, ...]; first: [T] bool
    or None (True cuts the carry there). Gradients reach log_a and b."""
    Bsz, T = b.shape[:2]
    rest = b.shape[2:]
    f = torch.promote_types(log_a.dtype, b.dtype)
    log_a = log_a.to(f).expand(b.shape)
    if first is not None:
        cut = first.view(1, T, *([1] * len(rest)))
        log_a = torch.where(cut, torch.tensor(-torch.inf, dtype=f, device=b.device), log_a)
    h = _LinearScan.apply(log_a.reshape(Bsz, T, -1), b.to(f).reshape(Bsz, T, -1))
    return h.reshape(Bsz, T, *rest)


class _ConstantDecayScan(torch.autograd.Function):
    """h_t = a h_{t-1} + b_t with one decay a = exp(log_a) per channel for every step (LRU), real or
    complex. The powers a^(s + 1) inside a chunk come from one exp each (no running sums of phases). For
    complex a PyTorch's gradients are conjugate-linear: dL/db_t = g_t with g_t = dL/dh_t + conj(a) g_{t+1},
    and dL/dlog_a = conj(a) sum_t g_t conj(h_{t-1})."""

    @staticmethod
    def forward(ctx, log_a, b):
        from alloyml.kernels.common.diagonal_scan import complex_exp

        Bsz, T, M = b.shape
        L = chunk_size(T)
        nc = -(-T // L)
        powers = complex_exp(torch.arange(1, L + 1, device=b.device, dtype=log_a.real.dtype)[:, None] * log_a)
        h = _chunks(b, nc, L, copy=True)
        a = powers[0]
        for s in range(1, L):
            h[:, :, s].addcmul_(h[:, :, s - 1], a)
        _carry_in(h, powers, reverse=False)
        h = h.view(Bsz, nc * L, M)[:, :T]
        ctx.save_for_backward(powers, h)
        return h

    @staticmethod
    def backward(ctx, gh):
        powers, h = ctx.saved_tensors
        Bsz, T, M = h.shape
        L = powers.shape[0]
        nc = -(-T // L)
        conj = powers.conj()
        g = _chunks(gh, nc, L, copy=True)
        a = conj[0]
        for s in range(L - 2, -1, -1):
            g[:, :, s].addcmul_(g[:, :, s + 1], a)
        _carry_in(g, conj.flip(0), reverse=True)  # position s is L - s steps from the next chunk's start
        g = g.view(Bsz, nc * L, M)[:, :T]
        g_log_a = conj[0] * (g[:, 1:] * h[:, :-1].conj()).sum((0, 1))
        return g_log_a, g


def _carry_in(h, decay, reverse: bool):
    """Add to each chunk of h ([B, nc, L, M], states from zero at the chunk's edge) the state entering it
    times decay ([L, M]: its decay to each position), chunk by chunk along (or against) time."""
    nc, L = h.shape[1], h.shape[2]
    edge = 0 if reverse else L - 1
    carry = torch.zeros_like(h[:, 0, 0])
    entering = torch.empty_like(h[:, :, 0])
    for c in (range(nc - 1, -1, -1) if reverse else range(nc)):
        entering[:, c] = carry
        carry = torch.addcmul(h[:, c, edge], decay[edge], carry)
    h.addcmul_(decay, entering[:, :, None])


def constant_decay_linear_scan(log_a, b):
    """All h_t = a h_{t-1} + b_t from zero along axis 1 with a = exp(log_a) the same at every step (the
    result of a chunked constant-decay scan, as one autograd node). log_a: [M] or broadcastable to b's
    channels (real or complex); b: [B, T, ...]. Gradients reach log_a (its shape) and b."""
    Bsz, T = b.shape[:2]
    rest = b.shape[2:]
    f = torch.promote_types(log_a.dtype, b.dtype)
    la = log_a.to(f).expand(rest).reshape(-1)
    h = _ConstantDecayScan.apply(la, b.to(f).reshape(Bsz, T, -1))
    return h.reshape(Bsz, T, *rest)
