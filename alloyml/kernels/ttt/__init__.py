"""Test-time training layers (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive
Hidden States"): TTT-Linear and TTT-MLP. The hidden state is an inner model f(x; theta) =
x + LN(g(x; theta)), g linear (TTT-Linear) or a two-layer GELU MLP (TTT-MLP), trained while the sequence
is read by gradient steps on the self-supervised reconstruction loss l_t = 1/2 ||f(k_t) - v_t||^2
(k_t = theta_K x_t, v_t = theta_V x_t, the views the layer projects), with a per-token learning rate
eta_t; the output is z_t = f(q_t; theta_t).

Mini-batch TTT: the tokens of each mini-batch of b (the paper's 16) take their gradients at the theta of
the mini-batch's start, and token t's output sees the steps of the mini-batch's tokens up to t; b = 1 is
plain online gradient descent, which for TTT-Linear without LN is the delta rule (with bias: the delta rule
on keys [k, 1]).

The op is defined here (checks, then the dual form of chunk.py); naive.py is the reference loop of explicit
gradient steps, recurrent.py the one-token step. No Triton form: every backend but "naive" runs the dual
form in PyTorch, on any device.
"""

from __future__ import annotations

from alloyml.kernels.ttt.naive import naive_ttt
from alloyml.kernels.ttt.recurrent import ttt_step


def check_ttt_inputs(q, k, v, eta, weights, norm, mini_batch, state, cu_seqlens, token=False):
    """Returns N (the rows of the state: B, or the number of packed sequences)."""
    import torch

    from alloyml.errors import InvalidInputError
    from alloyml.kernels.common import checks

    checks.check_qkv(q, k, v, token=token)
    H, d = q.shape[-2], q.shape[-1]
    if v.shape[-1] != d:
        raise InvalidInputError(f"v must have the head size of q and k ({d}): f(k) reconstructs v, got {v.shape[-1]}")
    checks.check_tensor("eta", eta, tuple(q.shape[:-1]), q)
    if not isinstance(mini_batch, int) or isinstance(mini_batch, bool) or mini_batch < 1:
        raise InvalidInputError(f"mini_batch must be a positive integer, got {mini_batch!r}")
    if not isinstance(weights, (tuple, list)) or len(weights) not in (2, 4):
        raise InvalidInputError("weights must be (W, b) for TTT-Linear or (W1, b1, W2, b2) for TTT-MLP")
    if len(weights) == 2:
        shapes = [(H, d, d), (H, d)]
    else:
        m = weights[0].shape[-1] if isinstance(weights[0], torch.Tensor) and weights[0].dim() == 3 else None
        shapes = [(H, d, m), (H, m), (H, m, d), (H, d)]
    for name, w, shape in zip(("W", "b", "W2", "b2") if len(weights) == 2 else ("W1", "b1", "W2", "b2"),
                              weights, shapes, strict=False):
        checks.check_tensor(name, w, shape, q)
    if norm is not None:
        if not isinstance(norm, (tuple, list)) or len(norm) != 2:
            raise InvalidInputError("norm must be (weight [H, d], bias [H, d]) or None")
        for name, x in zip(("norm weight", "norm bias"), norm, strict=True):
            checks.check_tensor(name, x, (H, d), q)
    N = q.shape[0] if token else checks.check_cu_seqlens(cu_seqlens, q.shape[0], q.shape[1])
    if state is not None:
        n = len(weights)
        if not isinstance(state, (tuple, list)) or len(state) != 2 * n + 1:
            raise InvalidInputError(f"state must be a tuple of {2 * n + 1} tensors (theta, pending, count)")
        for i, (s, w) in enumerate(zip(state[: 2 * n], [*weights, *weights], strict=True)):
            checks.check_tensor(f"state[{i}]", s, (N, *w.shape), q)
        count = state[-1]
        if not isinstance(count, torch.Tensor) or count.dtype != torch.long or tuple(count.shape) != (N,):
            raise InvalidInputError(f"state[-1] (tokens seen of the current mini-batch) must be int64 [{N}]")
    return N


def ttt(q, k, v, eta, weights, *, norm=None, mini_batch=16, eps=1e-6, initial_state=None, output_final_state=True,
        cu_seqlens=None, backend="auto"):
    """Mini-batch TTT over whole sequences.

    q, k, v: [B, T, H, d] (theta_Q x, theta_K x, theta_V x per head); eta: [B, T, H] inner learning rates
    (>= 0; e.g. eta_base * sigmoid(theta_lr x) / d); weights: the inner model's initial parameters,
    (W [H, d, d], b [H, d]) for TTT-Linear or (W1 [H, d, m], b1 [H, m], W2 [H, m, d], b2 [H, d]) for
    TTT-MLP, in row-vector form (g(x) = x W + b); norm: the inner LayerNorm's (weight [H, d], bias [H, d]),
    fixed during the sequence, or None for no LN (f(x) = x + g(x)); mini_batch: b; initial_state: a state
    from a previous call or the step (theta..., pending..., count [N] int64), N = B or the number of packed
    sequences; cu_seqlens: int64 offsets [N + 1] of packed sequences in a batch of one (each starts from
    `weights`, or its row of the state, on a fresh mini-batch grid); backend: "naive" (the loop of explicit
    gradient steps, float64 for float64 input) or any other name in checks.BACKENDS for the dual form.
    Returns (z: [B, T, H, d] in q's dtype, final state or None when `output_final_state` is False)."""
    from alloyml.kernels.common import checks
    from alloyml.kernels.ttt.chunk import ttt_dual_form

    check_ttt_inputs(q, k, v, eta, weights, norm, mini_batch, initial_state, cu_seqlens)
    if checks.diagonal_backend(backend) == "naive":
        return naive_ttt(q, k, v, eta, weights, norm=norm, mini_batch=mini_batch, eps=eps,
                         initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    z, state = ttt_dual_form(q, k, v, eta, weights, norm, mini_batch, eps, initial_state, cu_seqlens)
    return z.to(q.dtype), (state if output_final_state else None)


def ttt_linear(q, k, v, eta, W, b, *, norm=None, **kwargs):
    """TTT-Linear: `ttt` with weights (W [H, d, d], b [H, d])."""
    return ttt(q, k, v, eta, (W, b), norm=norm, **kwargs)


def ttt_mlp(q, k, v, eta, W1, b1, W2, b2, *, norm=None, **kwargs):
    """TTT-MLP: `ttt` with weights (W1 [H, d, m], b1 [H, m], W2 [H, m, d], b2 [H, d]), GELU between."""
    return ttt(q, k, v, eta, (W1, b1, W2, b2), norm=norm, **kwargs)


__all__ = ["check_ttt_inputs", "naive_ttt", "ttt", "ttt_linear", "ttt_mlp", "ttt_step"]
