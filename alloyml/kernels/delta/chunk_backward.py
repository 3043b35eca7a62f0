"""The chunked delta rule (chunk.py's algorithm) as one autograd.Function with its backward written out:
the CPU fast path.

Per chunk, with S_0 the state entering it and the notation of chunk.py (gamma the within-chunk cumulative
log-gates, Gamma_ts = e^{gamma_t - gamma_s} on s <= t), this form never builds U_part and W:

    A = strict(beta_t (k_t . k_s) Gamma_ts),  Tm = (I + A)^{-1},
    R = V - K_g S_0              (K_g = e^gamma K: what the decayed start state predicts wrong),
    U = Tm diag(beta) R,         S_C = e^{gamma_C} S_0 + K_end^T U      (K_end = e^{gamma_C - gamma} K),
    O = scale (Q_g S_0 + QK U)   (Q_g = e^gamma Q, QK = (Q K^T) * Gamma).

U = Tm beta (V - K_g S_0) is chunk.py's U_part - W S_0 with the product by Tm taken after the subtraction:
one product by Tm per chunk instead of two (Tm V and Tm K), inside the chunk loop. The backward runs the
loop in reverse with dS the gradient of the state leaving a chunk and G = Tm^T dU:

    dU = QK^T dO' + K_end dS,    G = Tm^T dU,    dS_0 = e^{gamma_C} dS + Q_g^T dO' - (beta K_g)^T G

(dO' = scale dO; dV = beta G inside the loop), and then for all chunks at once dK_g = -dV S_0^T, d beta = rowsum(G R) +
rowsum(dA kk Gamma) and dA = -G U^T: the gradient of the triangular system needs only G, never Tm's own
gradient. The gates enter only through e^{...} factors, so the gradient of each cumulative log-gate is a
sum of (gradient x value) terms; chunk.py turns it into dg with the cumulative sum's autograd.

Chunks are processed in groups (GROUP chunks of every sequence and head at a time): the batched products
of a group then work on tensors of about a megabyte, which stay in cache between the ops that use them,
instead of streaming every intermediate of the whole sequence through memory (DeltaNet fwd + bwd at
T = 4096, C = 64: 0.13 s in groups of 8 against 0.19 s in one batch, one thread, loaded machine).
Tensors are chunk-major, [n, B * H, C, D], so a group and each chunk of the loop are contiguous slices.
"""

from __future__ import annotations

import torch

from alloyml.kernels.delta.triangular import unit_lower_inverse

GROUP = 16


def _flat(x):
    """[g, N, ...] -> [g * N, ...] (a view: groups are contiguous slices)."""
    return x.reshape(-1, *x.shape[2:])


def _forward_group(q, k, v, beta, gamma, S, scale, o):
    """One group: q, k [g, N, C, K], v [g, N, C, V], beta and gamma [g, N, C], S [N, K, V] entering the
    group; writes the outputs into o [g, N, C, V]. Returns (S leaving the group, what the backward needs)."""
    C = q.shape[-2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    kT = k.transpose(-1, -2)
    kk = k @ kT  # [g, N, C, C]
    qk = q @ kT
    if gamma is None:
        kkd = kk.masked_fill_(~causal.tril(-1), 0.0)  # kk * Gamma on the strict lower part
        QK = qk.masked_fill_(~causal, 0.0)
        decay = a = None
        q_g = k_g = k_end = None
    else:
        decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill_(~causal, -float("inf")).exp_()
        kkd = kk.mul_(decay).tril_(-1)
        QK = qk.mul_(decay)
        eg = gamma.exp()[..., None]
        q_g, k_g = q * eg, k * eg
        k_end = k * (gamma[..., -1:] - gamma).exp()[..., None]
        a = gamma[..., -1].exp()[..., None, None]  # [g, N, 1, 1]
    A = beta[..., :, None] * kkd
    Tm = unit_lower_inverse(A)
    Tmb = Tm * beta[..., None, :]  # Tm diag(beta)
    g = q.shape[0]
    states = S.new_empty(g + 1, *S.shape)  # states[i]: the state entering chunk i; the products write here
    states[0] = S
    # R: one copy of V for the group, then updated in place chunk by chunk. Buffers that products write into
    # are allocated contiguous: *_like would copy the strides of the inputs, and _flat of a non-contiguous
    # tensor is a copy, so a product written there would be lost
    R = v.clone(memory_format=torch.contiguous_format)
    U = v.new_empty(v.shape)
    kg, ke = (k, k) if gamma is None else (k_g, k_end)
    for i in range(g):
        S = states[i]
        R[i].baddbmm_(kg[i], S, alpha=-1)
        torch.bmm(Tmb[i], R[i], out=U[i])
        if a is None:
            states[i + 1] = S
        else:
            torch.mul(a[i], S, out=states[i + 1])
        states[i + 1].baddbmm_(ke[i].transpose(-1, -2), U[i])
    starts = states[:g]
    torch.baddbmm(_flat(QK) @ _flat(U), _flat(q if gamma is None else q_g), _flat(starts), beta=scale, alpha=scale,
                  out=_flat(o))
    return states[g], (q, k, beta, gamma, decay, kkd, A, Tm, QK, q_g, k_g, k_end, a, starts, R, U)


def _backward_group(saved, do, dS, scale, dq, dk, dv, dbeta, dgamma):
    """The gradients of one group, from the gradient dS of the state leaving it, written into dq, dk, dv,
    dbeta and dgamma (None without gates). Returns the gradient of the state entering the group."""
    q, k, beta, gamma, decay, kkd, A, Tm, QK, q_g, k_g, k_end, a, starts, R, U = saved
    gated = gamma is not None
    qg, kg, ke = (q, k, k) if not gated else (q_g, k_g, k_end)
    do = do * scale
    X = (QK.transpose(-1, -2) @ do)  # [g, N, C, V]
    Y = (qg.transpose(-1, -2) @ do)  # [g, N, K, V]
    g = q.shape[0]
    G = X.new_empty(X.shape)
    dv = dv.view(G.shape)
    dstates = dS.new_empty(g + 1, *dS.shape)  # dstates[i]: the gradient of the state entering chunk i
    dstates[g] = dS
    # dV = beta G inside the loop, where G[i] was just written and is in cache, not in a pass afterwards
    for i in range(g - 1, -1, -1):
        dS = dstates[i + 1]
        du = X[i].baddbmm_(ke[i], dS)  # X is read only here: dU overwrites it
        torch.bmm(Tm[i].transpose(-1, -2), du, out=G[i])
        torch.mul(G[i], beta[i][..., None], out=dv[i])
        if a is None:
            torch.add(Y[i], dS, out=dstates[i])
        else:
            torch.addcmul(Y[i], a[i], dS, out=dstates[i])
        dstates[i].baddbmm_(kg[i].transpose(-1, -2), dv[i], alpha=-1)
    dS_next = dstates[1:]
    Uf, Sf = _flat(U), _flat(starts)
    UT, ST = Uf.transpose(-1, -2), Sf.transpose(-1, -2)
    dQK = (_flat(do) @ UT).view(QK.shape)
    dA = torch.baddbmm(_flat(A), _flat(G), UT, beta=0, alpha=-1).view(A.shape).tril_(-1)  # beta=0: A unread
    dqg = (_flat(do) @ ST).view(q.shape)
    dkg = torch.baddbmm(_flat(k), _flat(dv), ST, beta=0, alpha=-1).view(k.shape)
    dke = (Uf @ _flat(dS_next).transpose(-1, -2)).view(k.shape)
    torch.sum(G * R, -1, out=dbeta)
    dbeta += (dA * kkd).sum(-1)
    dkk = dA * beta[..., :, None]
    if gated:
        dkk = dkk.mul_(decay)
        dqk = dQK * decay
        P = torch.addcmul(dA * A, dQK, QK)  # gradient x value of each e^{gamma_t - gamma_s}, on s <= t
        p_end = (dke * k_end).sum(-1)  # [g, N, C]
        dgamma[:] = P.sum(-1) - P.sum(-2) + (dqg * q_g).sum(-1) + (dkg * k_g).sum(-1) - p_end
        d_end = (_flat(dS_next).flatten(1)[:, None] @ Sf.flatten(1)[..., None]).view(a.shape[:2])  # <dS_next, S_0>
        dgamma[..., -1] += d_end * a[..., 0, 0] + p_end.sum(-1)
        eg = gamma.exp()[..., None]
        dqg, dkg = dqg * eg, dkg * eg
        dke = dke * (gamma[..., -1:] - gamma).exp()[..., None]
    else:
        dqk = dQK.tril_()
    torch.baddbmm(_flat(dqg), _flat(dqk), _flat(k), out=_flat(dq))
    dkk = dkk + dkk.transpose(-1, -2)
    dk_flat = _flat(dk)
    torch.baddbmm(_flat(dkg.add_(dke)), _flat(dqk).transpose(-1, -2), _flat(q), out=dk_flat)
    dk_flat.baddbmm_(_flat(dkk), _flat(k))
    return dstates[0]


class ChunkDeltaFunction(torch.autograd.Function):
    """(q, k, v [n, N, C, K/V] chunk-major (N = B * H), beta [n, N, C], gamma (within-chunk cumulative
    log-gates [n, N, C], or None), S [N, K, V], scale) -> (o [n, N, C, V], final S [N, K, V])."""

    @staticmethod
    def forward(ctx, q, k, v, beta, gamma, S, scale):
        o, saved = v.new_empty(v.shape), []  # contiguous (see _forward_group)
        for j in range(0, q.shape[0], GROUP):
            part = slice(j, j + GROUP)
            S, s = _forward_group(q[part], k[part], v[part], beta[part], None if gamma is None else gamma[part], S,
                                  scale, o[part])
            saved.append((part, s))
        ctx.saved = saved
        ctx.scale = scale
        ctx.gated = gamma is not None
        ctx.shapes = q.shape, v.shape, beta.shape, S.shape
        return o, S.clone()  # the clone: the returned state is not a view of what the backward reads

    @staticmethod
    def backward(ctx, do, dS):
        saved = ctx.saved  # kept, not cleared: a retained graph (retain_graph=True) may run the backward again
        qk_shape, v_shape, beta_shape, s_shape = ctx.shapes
        like = saved[0][1][0]
        do = like.new_zeros(v_shape) if do is None else do
        dS = like.new_zeros(s_shape) if dS is None else dS
        dq, dk, dv, dbeta = (like.new_empty(x) for x in (qk_shape, qk_shape, v_shape, beta_shape))
        dgamma = like.new_empty(beta_shape) if ctx.gated else None
        for part, s in reversed(saved):
            dS = _backward_group(s, do[part], dS, ctx.scale, dq[part], dk[part], dv[part], dbeta[part],
                                 None if dgamma is None else dgamma[part])
        return dq, dk, dv, dbeta, dgamma, dS, None
