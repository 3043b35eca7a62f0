"""The chunked delta rule (chunk.py) as one autograd.Function with its backward written out.

Autograd through chunk.py's forward records every small op of the chunk loop and of the gates; here the
backward is the same few batched products run in reverse, and only the chunk-to-chunk recurrence of the
state gradient is a loop. Notation of chunk.py, per chunk (batched over all chunks): M = I + A, the UT
transform T = M^{-1} (kept explicitly: the forward applies it to [beta V, beta e^gamma K], the backward its
transpose), U = U_part - W S_0, S_C = e^{gamma_C} S_0 + K_end^T U, O = scale (Q_start S_0 + QK U).

Backward of the recurrence, from the last chunk back with dS the gradient of the state leaving a chunk:
    dU = scale QK^T dO + K_end dS,    dS_0 = e^{gamma_C} dS + scale Q_start^T dO - W^T dU;
the gradients of U_part (dU), W (-dU S_0^T), K_end (U dS^T), Q_start, QK and e^{gamma_C} then come for
all chunks at once. Through the UT transform: d rhs = T^T d[U_part, W], dA = -(d rhs [U_part, W]^T) on the
strictly lower part. The gates enter only as e^{gamma_t - gamma_s} factors, so the gradient of each
cumulative log-gate gamma is a sum of (gradient x value) terms, turned into dg by a reverse cumulative sum.
"""

from __future__ import annotations

import torch


def _inverse(A):
    """(I + A)^{-1} for strictly lower-triangular A [..., C, C] (unit lower triangular)."""
    C = A.shape[-1]
    eye = torch.eye(C, dtype=A.dtype, device=A.device)
    return torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)


def _forward(q, k, v, beta, gamma, S, scale):
    C = q.shape[-2]
    V = v.shape[-1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    strict = causal.tril(-1)
    kk = k @ k.transpose(-1, -2)
    qk = q @ k.transpose(-1, -2)
    if gamma is None:
        A = (beta[..., :, None] * kk).masked_fill_(~strict, 0.0)
        qk = qk.masked_fill_(~causal, 0.0)
        rhs = beta[..., None] * torch.cat([v, k], dim=-1)
        q_start, k_end, end_decay, decay = q, k, None, None
    else:
        decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill_(~causal, -float("inf")).exp_()
        A = beta[..., :, None] * kk * decay
        A = A.masked_fill_(~strict, 0.0)
        qk = qk.mul_(decay)
        eg = gamma.exp()[..., None]
        rhs = beta[..., None] * torch.cat([v, eg * k], dim=-1)
        q_start = q * eg
        k_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
        end_decay = gamma[..., -1].exp()[..., None, None]
    Tm = _inverse(A)
    solved = Tm @ rhs
    u_part, w = solved[..., :V], solved[..., V:]
    n = q.shape[2]
    starts = S.new_empty(*S.shape[:2], n, *S.shape[2:])
    U = torch.empty_like(u_part)
    for i in range(n):
        starts[:, :, i] = S
        u = torch.baddbmm(u_part[:, :, i].flatten(0, 1), w[:, :, i].flatten(0, 1), S.flatten(0, 1),
                          alpha=-1).view_as(u_part[:, :, i])
        U[:, :, i] = u
        S0 = S if end_decay is None else end_decay[:, :, i] * S
        S = torch.baddbmm(S0.flatten(0, 1), k_end[:, :, i].transpose(-1, -2).flatten(0, 1),
                          u.flatten(0, 1)).view_as(S)
    o = q_start @ starts
    o = (o + qk @ U).mul_(scale)
    saved = (q, k, v, beta, gamma, Tm, A, qk, decay, solved, U, starts, q_start, k_end, end_decay, rhs)
    return o, S, saved


class ChunkDeltaFunction(torch.autograd.Function):
    """(q, k, v [B, H, n, C, K/V], beta [B, H, n, C], gamma (within-chunk cumulative log-gates [B, H, n, C],
    or None), S [B, H, K, V], scale) -> (o [B, H, n, C, V], final S)."""

    @staticmethod
    def forward(ctx, q, k, v, beta, gamma, S, scale):
        o, S_final, saved = _forward(q, k, v, beta, gamma, S, scale)
        ctx.saved = saved
        ctx.scale = scale
        ctx.gated = gamma is not None
        return o, S_final

    @staticmethod
    def backward(ctx, do, dS):
        q, k, v, beta, gamma, Tm, A, qk, decay, solved, U, starts, q_start, k_end, end_decay, rhs = ctx.saved
        ctx.saved = None
        scale, V = ctx.scale, v.shape[-1]
        n = q.shape[2]
        if do is None:
            do = torch.zeros_like(U)
        if dS is None:
            dS = starts.new_zeros(starts[:, :, 0].shape)
        do = do * scale
        X = qk.transpose(-1, -2) @ do  # [B, H, n, C, V]
        Y = q_start.transpose(-1, -2) @ do  # [B, H, n, K, V]
        dU = torch.empty_like(U)
        dS_next = torch.empty_like(starts)  # the gradient of the state leaving each chunk
        for i in range(n - 1, -1, -1):
            dS_next[:, :, i] = dS
            du = torch.baddbmm(X[:, :, i].flatten(0, 1), k_end[:, :, i].flatten(0, 1), dS.flatten(0, 1))
            du = du.view_as(X[:, :, i])
            dU[:, :, i] = du
            dS0 = dS if end_decay is None else end_decay[:, :, i] * dS
            dS = torch.baddbmm((dS0 + Y[:, :, i]).flatten(0, 1), w_t(solved, V, i).flatten(0, 1),
                               du.flatten(0, 1), alpha=-1).view_as(dS)
        d_solved = torch.cat([dU, -(dU @ starts.transpose(-1, -2))], dim=-1)  # [d U_part, d W]
        dk_end = U @ dS_next.transpose(-1, -2)  # [B, H, n, C, K]
        dq_start = do @ starts.transpose(-1, -2)
        dqk = do @ U.transpose(-1, -2)
        d_rhs = Tm.transpose(-1, -2) @ d_solved
        dA = -(d_rhs @ solved.transpose(-1, -2))
        dA = dA.tril_(-1)
        d_rhs_v, d_rhs_k = d_rhs[..., :V], d_rhs[..., V:]
        dv = beta[..., None] * d_rhs_v
        if gamma is None:
            dkk_b = dA * beta[..., :, None]  # d kk_ts = dA_ts beta_t
            dqk_raw = dqk.tril_()
            dbeta = (dA * (k @ k.transpose(-1, -2))).sum(-1) + (d_rhs_v * v).sum(-1) + (d_rhs_k * k).sum(-1)
            dq = dqk_raw @ k + dq_start
            dk = dqk_raw.transpose(-1, -2) @ q + (dkk_b + dkk_b.transpose(-1, -2)) @ k + beta[..., None] * d_rhs_k \
                + dk_end
            dgamma = None
        else:
            eg = gamma.exp()[..., None]
            dkk_b = dA * beta[..., :, None] * decay
            dqk_raw = dqk * decay
            kk = k @ k.transpose(-1, -2)
            dbeta = (dA * kk * decay).sum(-1) + (d_rhs_v * v).sum(-1) + (d_rhs_k * eg * k).sum(-1)
            e_end = (gamma[..., -1:] - gamma).exp()[..., None]
            dq = dqk_raw @ k + dq_start * eg
            dk = dqk_raw.transpose(-1, -2) @ q + (dkk_b + dkk_b.transpose(-1, -2)) @ k \
                + (beta[..., None] * eg) * d_rhs_k + dk_end * e_end
            P = dA * A + dqk * qk  # d e^{gamma_t - gamma_s} x its value, on s <= t
            p_end = (dk_end * k_end).sum(-1)  # [B, H, n, C]
            dgamma = P.sum(-1) - P.sum(-2) + (d_rhs_k * rhs[..., V:]).sum(-1) + (dq_start * q_start).sum(-1) - p_end
            d_end = (dS_next * starts).sum((-1, -2)) * end_decay[..., 0, 0] + p_end.sum(-1)  # d gamma_C
            dgamma[..., -1] += d_end
        return dq, dk, dv, dbeta, dgamma, dS, None


def w_t(solved, V, i):
    """W of chunk i, transposed: [B, H, K, C]."""
    return solved[:, :, i, :, V:].transpose(-1, -2)
