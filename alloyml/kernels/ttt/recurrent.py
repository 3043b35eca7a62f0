"""TTT, one token at a time (decoding): the state is the inner model theta at the start of the current
mini-batch, the pending sum of that mini-batch's scaled gradients, and how many of its tokens were seen."""

from __future__ import annotations


def ttt_step(q, k, v, eta, weights, state=None, *, norm=None, mini_batch=16, eps=1e-6):
    """One token of `alloyml.kernels.ttt.ttt`: q, k, v: [B, H, d]; eta: [B, H]; weights and norm as there;
    state: (theta..., pending..., count [B] long) or None (theta = weights, nothing pending).
    Returns (z: [B, H, d] in q's dtype, new state; theta and pending float32, float64 for float64 input)."""
    import torch

    from alloyml.kernels.ttt import check_ttt_inputs
    from alloyml.kernels.ttt.chunk import dual_outputs, inner_gradients, layer_pairs

    B = check_ttt_inputs(q, k, v, eta, weights, norm, mini_batch, state, None, token=True)
    dtype, c = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, eta = (x.to(c) for x in (q, k, v, eta))
    n = len(weights)
    if state is None:
        theta = [w.to(c).expand(B, *w.shape) for w in weights]
        pending = [torch.zeros_like(p) for p in theta]
        count = torch.zeros(B, dtype=torch.long, device=q.device)
    else:
        theta, pending, count = [s.to(c) for s in state[:n]], [s.to(c) for s in state[n : 2 * n]], state[-1]
    norm = None if norm is None else tuple(x.to(c)[:, None, :] for x in norm)  # [H, 1, d]: one token per head
    data = inner_gradients(k[..., None, :], v[..., None, :], theta, norm, eps)  # one token: n = 1
    base = [p - G for p, G in zip(theta, pending, strict=True)]
    z = dual_outputs(q[..., None, :], base, data, eta[..., None], norm, eps)[..., 0, :]
    for i, ((a, g), _) in enumerate(zip(data, layer_pairs(theta), strict=True)):
        eg = eta[..., None, None] * g  # [B, H, 1, d_out]
        pending[2 * i] = pending[2 * i] + a.transpose(-1, -2) @ eg
        pending[2 * i + 1] = pending[2 * i + 1] + eg[..., 0, :]
    count = count + 1
    full = count == mini_batch  # the mini-batch is complete: fold its gradients into theta
    theta = [torch.where(full.reshape(B, *[1] * (p.dim() - 1)), p - G, p) for p, G in zip(theta, pending, strict=True)]
    pending = [torch.where(full.reshape(B, *[1] * (G.dim() - 1)), 0.0, G) for G in pending]
    return z.to(dtype), (*theta, *pending, torch.where(full, 0, count))
