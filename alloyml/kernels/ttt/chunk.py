"""Mini-batch TTT in its dual form (PyTorch; the fast path on any device), after Sun et al. (2024), section
2.7 and appendix A.

Inside a mini-batch every token takes its gradient at theta, the inner parameters at the mini-batch's
start. For a linear layer z = x W + b that gradient is the outer product x_s^T g_s (g_s = dl_s/dz_s), so
the weights token t sees, W_t = W - sum_{s <= t} eta_s x_s^T g_s, never need to exist: its output is

    q_t W_t + b_t = q_t W + b - sum_{s <= t} eta_s (q_t . x_s + 1) g_s,

one [b, b] causal matrix product per mini-batch (the "dual form"). TTT-MLP is two such layers with a
GELU between: the second layer's query is gelu of the first's dual-form output, its training input the
hidden activation at theta. The gradients g_s are written out (the LayerNorm backward, GELU's
derivative), not taken by autograd, so the outer backward is a plain backward through them.

Only the mini-batch-to-mini-batch update theta <- theta - sum_s eta_s grad l_s depends on the previous
mini-batch; the loop runs over mini-batches (T / b steps), never over tokens, and the outputs of all
mini-batches come in one batch after it.

A state carries (theta at the start of the current mini-batch, the pending sum G of that mini-batch's
scaled gradients so far, the count of its tokens seen). Continuing from one, each row's tokens are placed
in a frame at their positions within the mini-batch grid (row r's token t at count_r + t); slots before
them are the already-seen tokens, whose gradients G holds, and they enter with eta = 0, as do the padding
slots at the end. Nothing here reads a value on the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def layer_norm(z, weight, bias, eps):
    mu = z.mean(-1, keepdim=True)
    var = (z - mu).pow(2).mean(-1, keepdim=True)
    return (z - mu) * (var + eps).rsqrt() * weight + bias


def layer_norm_residual_grad(z, x, y, weight, bias, eps):
    """d/dz of 1/2 ||x + LN(z) - y||^2 (LN(z) = weight * (z - mean) / std + bias), the normalisation
    computed once for the forward value and the backward."""
    zc = z - z.mean(-1, keepdim=True)
    rstd = (zc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    x_hat = zc * rstd
    dx = (x + x_hat * weight + bias - y) * weight  # d loss / d x_hat
    return rstd * (dx - dx.mean(-1, keepdim=True) - x_hat * (dx * x_hat).mean(-1, keepdim=True))


def gelu_grad(x):
    """d gelu(x) / dx = Phi(x) + x phi(x) for the exact (erf) GELU."""
    return 0.5 * (1 + torch.erf(x * math.sqrt(0.5))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def layer_pairs(params):
    """[W, b] or [W1, b1, W2, b2] -> [(W, b), ...]"""
    return list(zip(params[0::2], params[1::2], strict=True))


def inner_gradients(x, y, params, norm, eps):
    """The gradient of l = 1/2 ||x + LN(g(x; theta)) - y||^2 at theta for n tokens at once, per layer.

    x, y: [..., n, d]; params: [..., d_in, d_out] / [..., d_out] per layer; norm: (weight, bias)
    broadcastable to [..., n, d], or None. Returns [(layer input [..., n, d_in], dl/dz [..., n, d_out])]
    per layer: that layer's gradient is (input^T dl/dz, sum over n of dl/dz)."""
    layers = layer_pairs(params)
    inputs, pre = [], []
    h = x
    for i, (W, b) in enumerate(layers):
        if i:
            h = F.gelu(pre[-1])
        inputs.append(h)
        pre.append(h @ W + b[..., None, :])
    z = pre[-1]
    if norm is None:
        g = x + z - y
    else:
        g = layer_norm_residual_grad(z, x, y, *norm, eps)
    grads = [g]
    for i in range(len(layers) - 1, 0, -1):  # back through the GELU layers
        grads.insert(0, (grads[0] @ layers[i][0].transpose(-1, -2)) * gelu_grad(pre[i - 1]))
    return list(zip(inputs, grads, strict=True))


def dual_outputs(x, base, data, eta, norm, eps):
    """z_t = x_t + LN(g(x_t; theta_t)) with theta_t = base - sum_{s <= t} eta_s grad l_s (the s of `data`,
    from inner_gradients at theta), by the dual form. x: [..., n, d]; base: params [..., d_in, d_out] /
    [..., d_out]; eta: [..., n]. Returns [..., n, d]."""
    n = x.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    weight = torch.where(causal, eta[..., None, :], 0.0)  # [..., n (t), n (s)]: eta_s on s <= t
    h = x
    for i, ((W, b), (a, g)) in enumerate(zip(layer_pairs(base), data, strict=True)):
        if i:
            h = F.gelu(h)
        h = h @ W + b[..., None, :] - ((h @ a.transpose(-1, -2) + 1) * weight) @ g
    return x + (h if norm is None else layer_norm(h, *norm, eps))


def _rows(x, index):
    """x: [N, M, ...], index: [N] -> x[n, index[n]]: [N, ...] (device-side gather, no host read)."""
    return x[torch.arange(x.shape[0], device=x.device), index]


def ttt_dual_form(q, k, v, eta, weights, norm, mini_batch, eps, initial_state, cu_seqlens):
    """Shapes as in `alloyml.kernels.ttt.ttt`. Returns (z: [B, T, H, d] float32 / float64, final state)."""
    from alloyml.kernels.common.varlen import pad_sequences, padding_index, unpad_sequences

    c = torch.promote_types(q.dtype, torch.float32)
    q, k, v, eta = (x.to(c) for x in (q, k, v, eta))
    lengths = None
    if cu_seqlens is not None:  # padded slots have eta = 0: they change nothing
        index, valid = padding_index(cu_seqlens)
        q, k, v, eta = (pad_sequences(x, index) for x in (q, k, v, eta))
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    N, T, H, d = q.shape
    b, n_par = mini_batch, len(weights)
    if initial_state is None:
        theta = [w.to(c).expand(N, *w.shape) for w in weights]
        pending, count = None, None
        L = -(-T // b) * b
        frames = [F.pad(x, (0, 0, 0, 0, 0, L - T)) for x in (q, k, v)]
        eta_f = F.pad(eta, (0, 0, 0, L - T))
        ends = torch.full((N,), T, device=q.device) if lengths is None else lengths
    else:
        theta = [s.to(c) for s in initial_state[:n_par]]
        pending = [s.to(c) for s in initial_state[n_par : 2 * n_par]]
        count = initial_state[-1]
        L = -(-(T + b - 1) // b) * b
        src = torch.arange(L, device=q.device)[None, :] - count[:, None]  # [N, L]: frame slot -> token
        inside = (src >= 0) & (src < T)
        rows = torch.arange(N, device=q.device)[:, None]
        frames = [x[rows, src.clamp(0, T - 1)] * inside[..., None, None] for x in (q, k, v)]
        eta_f = eta[rows, src.clamp(0, T - 1)] * inside[..., None]
        ends = count + (T if lengths is None else lengths)
    nb = L // b
    norm_b = None if norm is None else tuple(x.to(c)[:, None, :] for x in norm)  # [H, 1, d]
    point = theta  # where the mini-batch's gradients are taken
    base = theta if pending is None else [p - G for p, G in zip(theta, pending, strict=True)]  # outputs' start
    if n_par == 2 and not _USE_AUTOGRAD_LINEAR:
        z, starts, data, e_mb = _linear_dual_form(frames, eta_f, b, point, base, norm_b, eps)
    else:
        qf, kf, vf = (x.reshape(N, nb, b, H, d).permute(0, 3, 1, 2, 4).contiguous() for x in frames)  # [N, H, nb, b, d]
        eta_f = eta_f.reshape(N, nb, b, H).permute(0, 3, 1, 2).contiguous()  # [N, H, nb, b]
        loop = _linear_minibatch_loop if n_par == 2 else _minibatch_loop
        points, stacked_base, stacked_data = loop(kf, vf, eta_f, point, base, norm_b, eps)
        norm_f = None if norm_b is None else tuple(x[:, None] for x in norm_b)  # [H, 1, 1, d]
        z = dual_outputs(qf, stacked_base, stacked_data, eta_f, norm_f, eps)  # [N, H, nb, b, d]
        z = z.permute(0, 2, 3, 1, 4).reshape(N, L, H, d)
        starts = [torch.stack(p, dim=0) for p in zip(*points, strict=True)]  # [nb + 1, N, ...] per parameter
        data = [tuple(x.transpose(1, 2) for x in layer) for layer in stacked_data]  # [N, nb, H, b, d_*]
        e_mb = eta_f.transpose(1, 2)  # [N, nb, H, b]
    if count is None:
        z = z[:, :T]
    else:
        z = z[torch.arange(N, device=q.device)[:, None], count[:, None] + torch.arange(T, device=q.device)]
    if cu_seqlens is not None:
        z = unpad_sequences(z, valid)

    # the state after each row's last token: theta at the start of its mini-batch, and that mini-batch's
    # pending gradients up to that token
    last, seen = ends // b, ends % b  # [N]
    if count is None and lengths is None:  # every row ends at T: its theta is known without a gather
        final_theta = [s[T // b] for s in starts]
    else:
        final_theta = [_rows(s.transpose(0, 1), last) for s in starts]
    at = last.clamp(max=nb - 1)
    taken = torch.arange(b, device=q.device)[None, :] < seen[:, None]  # [N, b]
    e_last = _rows(e_mb, at) * taken[:, None, :]  # [N, H, b]
    final_pending = []
    for a, g in data:
        a_last, eg = _rows(a, at), e_last[..., None] * _rows(g, at)
        final_pending += [a_last.transpose(-1, -2) @ eg, eg.sum(-2)]
    if pending is not None:  # rows still in the mini-batch the state started in keep its pending part
        first = last == 0
        final_pending = [F_ + torch.where(first.reshape(N, *[1] * (G.dim() - 1)), G, 0.0)
                         for F_, G in zip(final_pending, pending, strict=True)]
    return z, (*final_theta, *final_pending, seen)


_USE_AUTOGRAD_LINEAR = False  # the earlier path (autograd through the loop), kept for the A/B benchmark


def _linear_dual_form(frames, eta_f, b, point, base, norm_b, eps):
    """TTT-Linear by `linear_backward.TTTLinearDualForm` (one autograd.Function, backward written out).
    frames: q, k, v [N, L, H, d]; eta_f: [N, L, H]; b: the mini-batch; point, base: (W [N, H, d, d],
    b [N, H, d]); norm_b: (weight, bias) [H, 1, d] or None. Returns (z [N, L, H, d], the parameters at
    each mini-batch start [nb + 1, N, H, ...], [(k, g) as [N, nb, H, b, d]], eta [N, nb, H, b])."""
    from alloyml.kernels.ttt.linear_backward import TTTLinearDualForm

    N, L, H, d = frames[0].shape
    nb, M = L // b, N * H
    q, k, v = (x.reshape(N, nb, b, H, d).permute(1, 0, 3, 2, 4).reshape(nb, M, b, d) for x in frames)
    eta = eta_f.reshape(N, nb, b, H).permute(1, 0, 3, 2).reshape(nb, M, b)

    def flat(params):
        return params[0].reshape(M, d, d), params[1].reshape(M, 1, d)

    W_p, b_p = flat(point)
    # the same tensor twice would stop torch.compile from tracing the Function: None means "the point"
    W0, b0 = (None, None) if base is point else flat(base)
    nw, nbias = (None, None) if norm_b is None else (x.expand(N, H, 1, d).reshape(M, 1, d) for x in norm_b)
    z, Ws, bs, G = TTTLinearDualForm.apply(q, k, v, eta, W_p, b_p, W0, b0, nw, nbias, eps)
    z = z.view(nb, N, H, b, d).permute(1, 0, 3, 2, 4).reshape(N, L, H, d)
    starts = [Ws.view(nb + 1, N, H, d, d), bs.view(nb + 1, N, H, d)]
    data = [tuple(x.view(nb, N, H, b, d).transpose(0, 1) for x in (k, G))]
    return z, starts, data, eta.view(nb, N, H, b).transpose(0, 1)


def _minibatch_loop(kf, vf, eta_f, point, base, norm_b, eps):
    """The mini-batch-to-mini-batch recurrence for any inner model. kf, vf: [N, H, nb, b, d]; eta_f:
    [N, H, nb, b]; point: the parameters the first mini-batch's gradients are taken at, base: where its
    outputs start. Returns (the parameters at each mini-batch start, nb + 1 lists; the bases stacked
    [N, H, nb, ...] per parameter; per layer the (inputs, dl/dz) stacked [N, H, nb, b, d])."""
    points, bases, datas = [], [], []
    for x_m, y_m, e_m in zip(kf.unbind(2), vf.unbind(2), eta_f.unbind(2), strict=True):
        data = inner_gradients(x_m, y_m, point, norm_b, eps)
        points.append(point)
        bases.append(base)
        datas.append(data)
        nxt = []
        for (W, bias), (a, g) in zip(layer_pairs(base), data, strict=True):
            eg = e_m[..., None] * g
            nxt += [W - a.transpose(-1, -2) @ eg, bias - eg.sum(-2)]
        point = base = nxt
    points.append(point)
    stacked_base = [torch.stack(p, dim=2) for p in zip(*bases, strict=True)]
    stacked_data = [tuple(torch.stack(t, dim=2) for t in zip(*layer, strict=True))
                    for layer in zip(*datas, strict=True)]
    return points, stacked_base, stacked_data


def _linear_minibatch_loop(kf, vf, eta_f, point, base, norm_b, eps):
    """`_minibatch_loop` for TTT-Linear, with the same results, written for few operations per step: the
    loop runs T / b times and each step is a handful of small ops whose fixed cost (forward and autograd)
    dominates. Everything that does not depend on the carried W is computed for all mini-batches at once
    before the loop: the LayerNorm-residual gradient's constant part (x + bias_LN - y) * w_LN, the
    eta-scaled transposed inputs of the weight update, and eta as a row for the bias update. Inside the
    loop the pre-activation and both updates are single fused batched products (baddbmm)."""
    N, H, nb, b, d = kf.shape
    M = N * H
    k3 = kf.reshape(M, nb, b, d).unbind(1)  # unbind, not indexing: its backward is one stack
    ekT = (eta_f[..., None] * kf).transpose(-1, -2).reshape(M, nb, d, b).unbind(1)  # eta_s x_s^T
    e_row = eta_f.reshape(M, nb, 1, b).unbind(1)
    if norm_b is None:
        const = (kf - vf).reshape(M, nb, b, d).unbind(1)  # g = z + x - y
        w2 = None
    else:
        w, bn = norm_b  # [H, 1, d]
        const = ((kf + bn[:, None] - vf) * w[:, None]).reshape(M, nb, b, d).unbind(1)
        w2 = (w * w).expand(N, H, 1, d).reshape(M, 1, d)

    def flat(params):
        W, bias = params
        return W.reshape(M, d, d), bias.reshape(M, 1, d)

    def residual_grad(z, c):
        if w2 is None:
            return z + c
        zc = z - z.mean(-1, keepdim=True)
        rstd = (zc.pow(2).mean(-1, keepdim=True) + eps).rsqrt()
        x_hat = zc * rstd
        dx = torch.addcmul(c, x_hat, w2)
        return rstd * (dx - dx.mean(-1, keepdim=True) - x_hat * (dx * x_hat).mean(-1, keepdim=True))

    (W_p, b_p), (W, bias) = flat(point), flat(base)
    starts_W, starts_b, bases_W, bases_b, grads = [W_p], [b_p], [], [], []
    for m in range(nb):
        g = residual_grad(torch.baddbmm(b_p, k3[m], W_p), const[m])
        grads.append(g)
        bases_W.append(W)
        bases_b.append(bias)
        W = torch.baddbmm(W, ekT[m], g, alpha=-1)
        bias = torch.baddbmm(bias, e_row[m], g, alpha=-1)
        W_p, b_p = W, bias
        starts_W.append(W)
        starts_b.append(bias)
    points = [[Wm.view(N, H, d, d), bm.view(N, H, d)] for Wm, bm in zip(starts_W, starts_b, strict=True)]
    stacked_base = [torch.stack(bases_W, 1).view(N, H, nb, d, d), torch.stack(bases_b, 1).view(N, H, nb, d)]
    stacked_data = [(kf, torch.stack(grads, 1).view(N, H, nb, b, d))]
    return points, stacked_base, stacked_data
