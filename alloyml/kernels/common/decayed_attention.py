"""Causal attention inside small blocks with per-channel decays (the diagonal blocks of chunked GLA).

    attn[i, j] = sum_k q_ik k_jk exp(g_(j+1),k + ... + g_i,k)      for j <= i inside a block of C steps

Each pair needs its own K decays, so this is the part of the chunked form that cannot be a plain matrix
product. It runs one diagonal (fixed i - j) at a time, with a written-out backward.
"""

from __future__ import annotations

import torch


def decayed_attention(q, k, g):
    """q, k, g: [B, H, N, C, K] -> the blocks' causal attention [B, H, N, C, C] (zeros above the diagonal).

    Diagonal d holds attn[i, i - d] = sum_k (q_i * exp(w_d[i]))_k k_(i-d),k with exp(w_d[i]) grown as a
    running product of exp(g) <= 1, one factor more per diagonal: nothing overflows whatever the gates,
    and every tensor is at most [.., C, K] (never [C, C, K]), so the passes stay in cache. The backward is
    written out because autograd through C slices would zero-fill a full-size gradient per slice."""
    return DecayedAttention.apply(q, k, g)


def _diagonal_index(C: int, device):
    """Flat indices i * C + (i - d) of the lower triangle, diagonal d = 0, 1, .. after another."""

    rows = torch.cat([torch.arange(d, C, device=device) for d in range(C)])
    offsets = torch.cat([torch.full((C - d,), d, device=device) for d in range(C)])
    return rows * C + rows - offsets


def _window_decays(g):
    """exp(w_d) for d = 1..C-1, w_d[i] = g_(i-d+1) + ... + g_i for i = d..C-1: [.., C - d, K] each.

    Built as products of the per-step decays exp(g) <= 1, one more factor per diagonal: a multiply is a
    quarter of an exp here, nothing can overflow, and the rounding stays that of d products."""
    C = g.shape[-2]
    step = g.exp()
    decay = None
    for d in range(1, C):
        decay = step[..., 1:, :] if decay is None else decay[..., 1:, :] * step[..., 1 : C - d + 1, :]
        yield decay


class DecayedAttention(torch.autograd.Function):
    # module level (this module is imported only by the chunk backend), so torch.compile traces it
    @staticmethod
    def forward(ctx, q, k, g):
        C = q.shape[-2]
        diagonals = [torch.linalg.vecdot(q, k)]
        step = g.exp()
        decayed_q = q  # q_i * exp(w_d[i]), one more decay factor per diagonal
        for d in range(1, C):
            decayed_q = decayed_q[..., 1:, :] * step[..., 1 : C - d + 1, :]  # [.., C - d, K]
            diagonals.append(torch.linalg.vecdot(decayed_q, k[..., : C - d, :]))
        values = torch.cat(diagonals, dim=-1)  # [.., C (C + 1) / 2]
        attn = values.new_zeros(*values.shape[:-1], C * C)
        attn.index_copy_(-1, _diagonal_index(C, q.device), values)
        ctx.save_for_backward(q, k, g)
        return attn.unflatten(-1, (C, C))

    @staticmethod
    def backward(ctx, d_attn):
        q, k, g = ctx.saved_tensors
        C = q.shape[-2]
        dq, dk = torch.zeros_like(q), torch.zeros_like(k)  # the decayed pairs' parts (d >= 1)
        for d, decay in enumerate(_window_decays(g), start=1):
            da = torch.diagonal(d_attn, -d, -2, -1)[..., None] * decay  # [.., C - d, K]
            dq[..., d:, :].addcmul_(da, k[..., : C - d, :])
            dk[..., : C - d, :].addcmul_(da, q[..., d:, :])
        # d g_s sums the pairs j < s <= i whose decay holds g_s. Each decayed pair (d >= 1) adds its
        # d attn * attn to q_i dq_i and to k_j dk_j, so those pairs are -(sum over t < s of
        # q_t dq_t - k_t dk_t): pairs with both ends before s cancel. The undecayed pairs (d = 0) are
        # left out of dq and dk until the end, rather than left to cancel to a rounding error the size
        # of q.k, which would swamp the gradient of a strong decay.
        # The sum over t < s (g_0 decays no pair inside the block) as one product with a -1/0 strictly
        # lower-triangular mask: a cumulative sum along this strided axis is a slow memory-bound pass.
        flow = (q * dq).addcmul_(k, dk, value=-1.0)
        dg = torch.full((C, C), -1.0, dtype=g.dtype, device=g.device).tril(-1) @ flow
        d0 = torch.diagonal(d_attn, 0, -2, -1)[..., None]  # [.., C, 1]
        return dq.addcmul_(d0, k), dk.addcmul_(d0, q), dg
