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
    u_part = solved[..., :V]
    B, H, n = q.shape[:3]
    # the loop reads one chunk of every (batch, head) per step: chunk-major copies make those slices
    # contiguous, so each step is two plain batched products
    w_seq, k_seq = (x.movedim(2, 0).reshape(n, B * H, *x.shape[3:]).contiguous() for x in (solved[..., V:], k_end))
    u_seq = solved[..., :V].movedim(2, 0).reshape(n, B * H, *u_part.shape[3:]).contiguous()
    a_seq = None if end_decay is None else end_decay.movedim(2, 0).reshape(n, B * H, 1, 1).contiguous()
    starts = S.new_empty(n, B * H, *S.shape[2:])
    U = torch.empty_like(u_seq)
    S = S.reshape(B * H, *S.shape[2:])
    for i in range(n):
        starts[i] = S
        u = torch.baddbmm(u_seq[i], w_seq[i], S, alpha=-1, out=U[i])
        S = torch.baddbmm(S if a_seq is None else a_seq[i] * S, k_seq[i].transpose(-1, -2), u)
    S = S.view(B, H, *S.shape[1:])
    starts = starts.view(n, B, H, *starts.shape[2:]).movedim(0, 2)
    U = U.view(n, B, H, *U.shape[2:]).movedim(0, 2)
    o = q_start @ starts
    o = (o + qk @ U).mul_(scale)
    saved = (q, k, v, beta, gamma, Tm, A, kk, qk, decay, solved, U, starts, q_start, k_end, end_decay, rhs)
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
        q, k, v, beta, gamma, Tm, A, kk, qk, decay, solved, U, starts, q_start, k_end, end_decay, rhs = ctx.saved
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
        B, H = q.shape[:2]
        X_seq, Y_seq = (x.movedim(2, 0).reshape(n, B * H, *x.shape[3:]).contiguous() for x in (X, Y))
        k_seq = k_end.movedim(2, 0).reshape(n, B * H, *k_end.shape[3:]).contiguous()
        wt_seq = solved[..., V:].transpose(-1, -2).movedim(2, 0).reshape(n, B * H, -1, q.shape[-2]).contiguous()
        a_seq = None if end_decay is None else end_decay.movedim(2, 0).reshape(n, B * H, 1, 1).contiguous()
        dU = torch.empty_like(X_seq)
        dS_next = torch.empty_like(Y_seq)  # the gradient of the state leaving each chunk
        dS = dS.reshape(B * H, *dS.shape[2:])
        for i in range(n - 1, -1, -1):
            dS_next[i] = dS
            du = torch.baddbmm(X_seq[i], k_seq[i], dS, out=dU[i])
            dS = torch.baddbmm((dS if a_seq is None else a_seq[i] * dS) + Y_seq[i], wt_seq[i], du, alpha=-1)
        dS = dS.view(B, H, *dS.shape[1:])
        dU = dU.view(n, B, H, *dU.shape[2:]).movedim(0, 2)
        dS_next = dS_next.view(n, B, H, *dS_next.shape[2:]).movedim(0, 2)
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
            dbeta = (dA * kk).sum(-1) + (d_rhs_v * v).sum(-1) + (d_rhs_k * k).sum(-1)
            dq = dqk_raw @ k + dq_start
            dk = dqk_raw.transpose(-1, -2) @ q + (dkk_b + dkk_b.transpose(-1, -2)) @ k + beta[..., None] * d_rhs_k \
                + dk_end
            dgamma = None
        else:
            eg = gamma.exp()[..., None]
            dkk_b = dA * beta[..., :, None] * decay
            dqk_raw = dqk * decay
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

