"""Test-time training as a plain loop over tokens of explicit gradient steps, written from the paper
(Sun et al. 2024, "Learning to (Learn at Test Time)"): the ground truth for the dual form and the decode
step. The inner loss's gradient comes from torch.autograd.grad, so this shares no derivative with either."""

from __future__ import annotations


def inner_model(x, params, norm, eps):
    """f(x) = x + LN(g(x)) with g(x) = x W + b (two params) or gelu(x W1 + b1) W2 + b2 (four).
    x: [B, H, d]; params: [B, H, ...] each; norm: (weight [H, d], bias [H, d]) or None (no LN)."""
    import torch.nn.functional as F

    def linear(x, W, b):
        return (x[..., None, :] @ W).squeeze(-2) + b

    if len(params) == 2:
        z = linear(x, *params)
    else:
        z = linear(F.gelu(linear(x, params[0], params[1])), params[2], params[3])
    if norm is not None:
        z = F.layer_norm(z, z.shape[-1:], eps=eps) * norm[0] + norm[1]
    return x + z


def naive_ttt(q, k, v, eta, weights, *, norm=None, mini_batch=16, eps=1e-6, initial_state=None,
              output_final_state=True, cu_seqlens=None):
    """Shapes and meaning as in `alloyml.kernels.ttt.ttt`. Computes in float32, or float64 for float64 inputs.

    For each token t, with theta the inner parameters at the start of t's mini-batch and G the sum of
    the mini-batch's earlier (and t's own) scaled gradients:
        l_t(theta) = 1/2 ||f(k_t; theta) - v_t||^2,    G += eta_t grad l_t(theta)
        z_t = f(q_t; theta - G),                        and after the mini-batch's last token theta -= G."""
    import torch

    from alloyml.kernels.common.naive import compute_dtype

    def run(q, k, v, eta, initial_state):
        B = q.shape[0]
        dtype, c = q.dtype, compute_dtype(q.dtype)
        if initial_state is None:
            params = [w.to(c).expand(B, *w.shape) for w in weights]
            pending = [torch.zeros_like(p) for p in params]
            count = torch.zeros(B, dtype=torch.long, device=q.device)
        else:
            n = len(weights)
            params = [s.to(c) for s in initial_state[:n]]
            pending = [s.to(c) for s in initial_state[n : 2 * n]]
            count = initial_state[-1]
        nrm = None if norm is None else tuple(x.to(c) for x in norm)
        outs = []
        for q_t, k_t, v_t, e_t in zip(*(x.to(c).unbind(1) for x in (q, k, v, eta)), strict=True):
            with torch.enable_grad():
                theta = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
                loss = 0.5 * (inner_model(k_t, theta, nrm, eps) - v_t).pow(2).sum()
                step = torch.autograd.grad(loss, theta, create_graph=True)
            pending = [G + e_t.reshape(*e_t.shape, *[1] * (G.dim() - 2)) * s
                       for G, s in zip(pending, step, strict=True)]
            outs.append(inner_model(q_t, [p - G for p, G in zip(params, pending, strict=True)], nrm, eps))
            count = count + 1
            full = count == mini_batch
            params = [torch.where(full.reshape(B, *[1] * (p.dim() - 1)), p - G, p)
                      for p, G in zip(params, pending, strict=True)]
            pending = [torch.where(full.reshape(B, *[1] * (G.dim() - 1)), 0.0, G) for G in pending]
            count = torch.where(full, 0, count)
        return torch.stack(outs, dim=1).to(dtype), (*params, *pending, count)

    if cu_seqlens is None:
        o, state = run(q, k, v, eta, initial_state)
        return o, (state if output_final_state else None)
    bounds = cu_seqlens.tolist()  # one sequence at a time (common.naive.per_sequence takes one state tensor)
    outs, states = [], []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        s0 = None if initial_state is None else tuple(s[i : i + 1] for s in initial_state)
        o, s = run(q[:, a:b], k[:, a:b], v[:, a:b], eta[:, a:b], s0)
        outs.append(o)
        states.append(s)
    state = tuple(torch.cat(parts) for parts in zip(*states, strict=True))
    return torch.cat(outs, dim=1), (state if output_final_state else None)
