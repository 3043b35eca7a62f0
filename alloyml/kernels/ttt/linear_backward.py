"""TTT-Linear's mini-batch dual form as one autograd.Function with the backward written out.

The recurrence over mini-batches is a handful of small ops per step (T / b steps), so autograd's fixed
cost per recorded op is a large part of the time; here the forward runs without a graph, saving the
weights at each mini-batch start (W_m, b_m), the pre-activations K_m W_m + b_m and the inner gradients
g_m, and the backward recomputes the rest in batches over all mini-batches. Its only loop is the
reverse recurrence of the gradient of (W_m, b_m):

    dW_m = dW_{m+1} + (direct terms of mini-batch m) + K_m^T dP_m,   db_m likewise with 1^T dP_m,

where dP_m, the gradient of the pre-activation P_m = K_m W_m + b_m, comes from dg_m (the gradient of
g_m = LNgrad(P_m, c_m), g_m's own uses plus -eta_m * (K_m dW_{m+1} + db_m+1) through the update
W_{m+1} = W_m - (eta K_m)^T g_m) by the derivative of the LayerNorm-residual gradient (written out below).

Layouts (mini-batch major, so each step reads contiguous slices): q, k, v: [nb, M, b, d] with M = N * H;
eta: [nb, M, b]; weights: W [M, d, d], bias [M, 1, d]; norm weight / bias [M, 1, d] or None.
"""

from __future__ import annotations

import torch


def _ln_parts(p, c, w2, eps):
    """The forward of g = LNgrad(p, c) (d/dp of 1/2 ||x + LN(p) - y||^2 with c = (x + bias - y) w and
    w2 = w^2): returns (g, rstd, x_hat, dx, mean(dx * x_hat))."""
    pc = p - p.mean(-1, keepdim=True)
    rstd = (pc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    x_hat = pc * rstd
    dx = torch.addcmul(c, x_hat, w2)
    m_dxh = (dx * x_hat).mean(-1, keepdim=True)
    g = rstd * (dx - dx.mean(-1, keepdim=True) - x_hat * m_dxh)
    return g, rstd, x_hat, dx, m_dxh


def _ln_grad_backward(gam, g, rstd, x_hat, dx, m_dxh, w2):
    """Given d loss / d g (gam), returns (d loss / d p, d loss / d c = d loss / d dx) for g = LNgrad(p, c).

    g = rstd u, u = dx - mean(dx) - x_hat mean(dx x_hat), dx = c + x_hat w2, x_hat = (p - mean p) rstd."""
    d = gam.shape[-1]
    du = rstd * gam
    dr = (gam * g).sum(-1, keepdim=True) / rstd  # d loss / d rstd through the factor rstd (u = g / rstd)
    m2 = (du * x_hat).mean(-1, keepdim=True)
    ddx = du - du.mean(-1, keepdim=True) - x_hat * m2
    dxh = ddx * w2 - du * m_dxh - dx * m2
    m4 = (dxh * x_hat).mean(-1, keepdim=True)
    dp = rstd * (dxh - dxh.mean(-1, keepdim=True)) - x_hat * (rstd * m4 + dr * rstd * rstd / d)
    return dp, ddx


def _layer_norm_parts(h, eps):
    hc = h - h.mean(-1, keepdim=True)
    rstd = (hc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    return hc * rstd, rstd


class TTTLinearDualForm(torch.autograd.Function):
    """(q, k, v, eta, W_point, b_point, W_base, b_base, norm_w, norm_b, eps) -> (z [nb, M, b, d],
    W at each mini-batch start [nb + 1, M, d, d], b likewise [nb + 1, M, 1, d], inner gradients g
    [nb, M, b, d]). The first mini-batch takes its gradients at (W_point, b_point) and starts its
    outputs and update from (W_base, b_base) (they differ when continuing mid-mini-batch); the later
    ones use their start for both; W_base / b_base None: the same as the point. norm_w / norm_b None: no
    LayerNorm (f(x) = x + x W + b)."""

    @staticmethod
    def forward(ctx, q, k, v, eta, W_p, b_p, W0, b0, nw, nbias, eps):
        nb, M, b, d = k.shape
        ctx.base_is_point = W0 is None
        if W0 is None:
            W0, b0 = W_p, b_p
        has_norm = nw is not None
        if has_norm:
            c = (k + nbias - v) * nw  # the LN-residual gradient's part that does not depend on W
            w2 = nw * nw
        else:
            c = k - v
            w2 = None
        ekT = (eta[..., None] * k).transpose(-1, -2)  # [nb, M, d, b]
        e_row = eta[:, :, None, :]  # [nb, M, 1, b]
        Ws = q.new_empty(nb + 1, M, d, d)
        bs = q.new_empty(nb + 1, M, 1, d)
        P = q.new_empty(nb, M, b, d)
        G = q.new_empty(nb, M, b, d)
        Ws[0] = W0
        bs[0] = b0
        Wc, bc = W_p, b_p
        for m in range(nb):
            torch.baddbmm(bc, k[m], Wc, out=P[m])
            if has_norm:
                G[m] = _ln_parts(P[m], c[m], w2, eps)[0]
            else:
                torch.add(P[m], c[m], out=G[m])
            torch.baddbmm(Ws[m], ekT[m], G[m], alpha=-1, out=Ws[m + 1])
            torch.baddbmm(bs[m], e_row[m], G[m], alpha=-1, out=bs[m + 1])
            Wc, bc = Ws[m + 1], bs[m + 1]
        # outputs: h_t = q_t W_m + b_m - sum_{s <= t} eta_s (q_t . k_s + 1) g_s, then q + LN(h)
        mask = torch.ones(b, b, dtype=torch.bool, device=q.device).tril()
        S = q @ k.transpose(-1, -2) + 1  # [nb, M, b, b]
        Ew = torch.where(mask, eta[..., None, :], 0.0)
        h = torch.baddbmm(bs[:nb].reshape(nb * M, 1, d), q.reshape(nb * M, b, d), Ws[:nb].reshape(nb * M, d, d))
        h = h.view(nb, M, b, d) - (S * Ew) @ G
        if has_norm:
            h_hat, rstd_o = _layer_norm_parts(h, eps)
            z = q + h_hat * nw + nbias
        else:
            h_hat = rstd_o = None
            z = q + h
        ctx.eps, ctx.has_norm = eps, has_norm
        ctx.save_for_backward(q, k, v, eta, W_p, Ws, bs, P, G, S, Ew, nw, nbias, h_hat, rstd_o)
        return z, Ws, bs, G

    @staticmethod
    def backward(ctx, dz, dWs, dbs, dG):
        q, k, v, eta, W_p, Ws, bs, P, G, S, Ew, nw, nbias, h_hat, rstd_o = ctx.saved_tensors
        eps, has_norm = ctx.eps, ctx.has_norm
        nb, M, b, d = k.shape
        flat = nb * M
        dnw = dnb = None
        # the output LayerNorm and residual
        dq = dz.clone()
        if has_norm:
            dnw = (dz * h_hat).sum((0, 2))[:, None]
            dnb = dz.sum((0, 2))[:, None]
            dhh = dz * nw
            dh = rstd_o * (dhh - dhh.mean(-1, keepdim=True) - h_hat * (dhh * h_hat).mean(-1, keepdim=True))
        else:
            dh = dz
        # h = q W_m + b_m - (S * Ew) g
        dq += (dh.reshape(flat, b, d) @ Ws[:nb].reshape(flat, d, d).transpose(-1, -2)).view(nb, M, b, d)
        dWb = torch.zeros_like(Ws)  # d loss / d W_m, filled in by the reverse recurrence below
        dbb = torch.zeros_like(bs)
        dWb[:nb] = q.transpose(-1, -2) @ dh + dWs[:nb]
        dbb[:nb] = dh.sum(-2, keepdim=True) + dbs[:nb]
        dWb[nb] = dWs[nb]
        dbb[nb] = dbs[nb]
        A = S * Ew
        gam = dG - A.transpose(-1, -2) @ dh  # d loss / d g_m, except through the update (added in the loop)
        dA = -(dh @ G.transpose(-1, -2))
        dS = dA * Ew
        dq += dS @ k
        dk = dS.transpose(-1, -2) @ q
        deta = (dA * S).tril().sum(-2)  # Ew's column s holds eta_s on the rows t >= s
        # the reverse recurrence over mini-batches
        w2 = nw * nw if has_norm else None
        if has_norm:  # the forward of LNgrad for all mini-batches at once
            c = (k + nbias - v) * nw
            g_all, rstd_all, xh_all, dx_all, mdxh_all = _ln_parts(P, c, w2, eps)
        R = torch.empty_like(G)  # K_m dW_{m+1} + db_{m+1}
        dP = torch.empty_like(G)
        dC = torch.empty_like(G)
        kT = k.transpose(-1, -2)
        for m in range(nb - 1, -1, -1):
            torch.baddbmm(dbb[m + 1], k[m], dWb[m + 1], out=R[m])
            gm = torch.addcmul(gam[m], eta[m][..., None], R[m], value=-1)
            if has_norm:
                dP[m], dC[m] = _ln_grad_backward(gm, g_all[m], rstd_all[m], xh_all[m], dx_all[m], mdxh_all[m], w2)
            else:
                dP[m] = gm
                dC[m] = gm
            dWb[m] += dWb[m + 1]
            dbb[m] += dbb[m + 1]
            if m:
                dWb[m].baddbmm_(kT[m], dP[m])
                dbb[m] += dP[m].sum(-2, keepdim=True)
        dW_p = kT[0] @ dP[0]
        db_p = dP[0].sum(-2, keepdim=True)
        # the pre-activations P_m = k_m W_m + b_m (mini-batch 0 at the point)
        if nb > 1:
            dk[1:] += (dP[1:].reshape(-1, b, d) @ Ws[1:nb].reshape(-1, d, d).transpose(-1, -2)).view(nb - 1, M, b, d)
        dk[0] += dP[0] @ W_p.transpose(-1, -2)
        # the updates W_{m+1} = W_m - (eta k_m)^T g_m, b_{m+1} = b_m - eta^T g_m
        dk -= eta[..., None] * (G.reshape(flat, b, d) @ dWb[1:].reshape(flat, d, d).transpose(-1, -2)).view(nb, M, b, d)
        deta -= (G * R).sum(-1)
        # c = (k + bias_LN - v) w_LN and w2 = w_LN^2
        if has_norm:
            dcw = dC * nw
            dk += dcw
            dv = -dcw
            dnb += dcw.sum((0, 2))[:, None]
            dnw += (dC * (k + nbias - v)).sum((0, 2))[:, None]
            dnw += 2 * nw * (dC * xh_all).sum((0, 2))[:, None]  # dx = c + x_hat w2
        else:
            dk += dC
            dv = -dC
        if ctx.base_is_point:
            return dq, dk, dv, deta, dW_p + dWb[0], db_p + dbb[0], None, None, dnw, dnb, None
        return dq, dk, dv, deta, dW_p, db_p, dWb[0], dbb[0], dnw, dnb, None
