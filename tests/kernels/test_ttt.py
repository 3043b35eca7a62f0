"""TTT-Linear and TTT-MLP: the dual form and the step against the loop of explicit gradient steps
(naive.py, gradients from torch.autograd.grad) for outputs, final states (theta, pending gradients,
count) and every outer gradient (q, k, v, eta, the inner model's initial weights, the LayerNorm) in float32
at relative RMS <= 1e-5, over odd lengths and mini-batch sizes, continuing from a state mid-mini-batch
(rows at different counts), and packed sequences; TTT-Linear without LN at mini-batch 1 against the delta
rule it reduces to."""

from __future__ import annotations

import pytest
import torch
from ssm_cases import TOL, rel_rms

from alloyml.errors import InvalidInputError
from alloyml.kernels.delta import delta_rule
from alloyml.kernels.ttt import ttt, ttt_step

H, D = 2, 6


def make_weights(kind, gen, dtype=torch.float64):
    def r(*shape, s=1.0):
        return s * torch.randn(*shape, generator=gen, dtype=torch.float64)

    m = 4 * D
    if kind == "linear":
        weights = [r(H, D, D, s=0.3), r(H, D, s=0.1)]
    else:
        weights = [r(H, D, m, s=0.3), r(H, m, s=0.1), r(H, m, D, s=0.2), r(H, D, s=0.1)]
    norm = [1 + r(H, D, s=0.1), r(H, D, s=0.1)]
    return [w.to(dtype) for w in weights], [x.to(dtype) for x in norm]


def make_tokens(B, T, gen, eta_max=0.5):
    q, k, v = (torch.randn(B, T, H, D, generator=gen, dtype=torch.float64) for _ in range(3))
    return [q, k, v, eta_max * torch.rand(B, T, H, generator=gen, dtype=torch.float64)]


def outputs_and_grads(fn, leaves, dtype, seed=1):
    """fn(*leaves) -> (z, state); returns [z, state tensors..., d leaf...] (float64) and the count."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in leaves]
    z, state = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    parts = [z, *state[:-1]]
    loss = sum((p.double() * torch.randn(p.shape, generator=gen, dtype=torch.float64)).sum() for p in parts)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [p.detach().double() for p in parts] + [g.double() for g in grads], state[-1]


def assert_close_to(got, want):
    (got, count), (want, want_count) = got, want
    assert torch.equal(count, want_count)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if b.abs().max() == 0:  # nothing pending (mini-batch 1, or the count landed on a boundary)
            assert a.abs().max() < 1e-6, i
        else:
            assert rel_rms(a, b) <= TOL, (i, rel_rms(a, b))


def op(backend, kind, use_norm, mini_batch, cu_seqlens=None):
    n = 2 if kind == "linear" else 4

    def fn(q, k, v, eta, *rest):
        weights, norm = tuple(rest[:n]), (tuple(rest[n:]) if use_norm else None)
        return ttt(q, k, v, eta, weights, norm=norm, mini_batch=mini_batch, cu_seqlens=cu_seqlens, backend=backend)
    return fn


def steps(kind, use_norm, mini_batch):
    n = 2 if kind == "linear" else 4

    def fn(q, k, v, eta, *rest):
        weights, norm = tuple(rest[:n]), (tuple(rest[n:]) if use_norm else None)
        state, zs = None, []
        for t in range(q.shape[1]):
            z, state = ttt_step(q[:, t], k[:, t], v[:, t], eta[:, t], weights, state, norm=norm,
                                mini_batch=mini_batch)
            zs.append(z)
        return torch.stack(zs, 1), state
    return fn


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize(("T", "mini_batch", "use_norm"), [(29, 16, True), (45, 7, False), (19, 1, True)])
def test_dual_form_and_step_match_the_loop_of_gradient_steps(kind, T, mini_batch, use_norm):
    gen = torch.Generator().manual_seed(T + mini_batch)
    weights, norm = make_weights(kind, gen)
    leaves = make_tokens(2, T, gen, eta_max=0.5 if use_norm else 0.1) + weights + (norm if use_norm else [])
    want = outputs_and_grads(op("naive", kind, use_norm, mini_batch), leaves, torch.float64)
    assert_close_to(outputs_and_grads(op("chunk", kind, use_norm, mini_batch), leaves, torch.float32), want)
    if T < 20:
        assert_close_to(outputs_and_grads(steps(kind, use_norm, mini_batch), leaves, torch.float32), want)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_continuing_from_a_state_mid_mini_batch(kind):
    # Rows stopped at different points (counts 3 and 0 of mini-batch 8): the dual form continues each on
    # its own grid, as the one-pass loop does.
    gen = torch.Generator().manual_seed(7)
    weights, norm = make_weights(kind, gen)
    tokens = make_tokens(2, 30, gen)
    full = ttt(*tokens, tuple(weights), norm=tuple(norm), mini_batch=8, backend="naive")
    head = [ttt(*[x[r : r + 1, :cut] for x in tokens], tuple(weights), norm=tuple(norm), mini_batch=8,
                backend="naive") for r, cut in ((0, 11), (1, 16))]
    state = tuple(torch.cat(parts) for parts in zip(*(h[1] for h in head), strict=True))
    assert state[-1].tolist() == [3, 0]
    rest = [torch.cat([x[0:1, 11:25], x[1:2, 16:30]]) for x in tokens]  # 14 more tokens each
    for backend in ("chunk", "naive"):
        z, s = ttt(*rest, tuple(weights), norm=tuple(norm), mini_batch=8, initial_state=state, backend=backend)
        torch.testing.assert_close(z[0], full[0][0, 11:25], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(z[1], full[0][1, 16:30], rtol=1e-10, atol=1e-10)
        assert s[-1].tolist() == [(11 + 14) % 8, (16 + 14) % 8]


def test_packed_sequences_each_start_from_the_initial_weights():
    cu = torch.tensor([0, 1, 20, 37, 70])
    gen = torch.Generator().manual_seed(3)
    weights, norm = make_weights("mlp", gen)
    leaves = make_tokens(1, 70, gen) + weights + norm
    want = outputs_and_grads(op("naive", "mlp", True, 16, cu), leaves, torch.float64)
    assert_close_to(outputs_and_grads(op("chunk", "mlp", True, 16, cu), leaves, torch.float32), want)
    alone = ttt(*[x[:, 20:37] for x in leaves[:4]], tuple(weights), norm=tuple(norm), backend="naive")
    torch.testing.assert_close(alone[0], want[0][0][:, 20:37], rtol=1e-12, atol=1e-12)


def test_ttt_linear_without_norm_at_mini_batch_one_is_the_delta_rule():
    # One gradient step per token on 1/2 ||k + k W + b - v||^2: [W; b] <- [W; b] - eta [k, 1]^T
    # ([k, 1] [W; b] - (v - k)), the delta rule with keys [k, 1], values v - k, beta = eta; the output
    # q + [q, 1] [W; b] after the step is q + the delta rule's read-out at scale 1.
    gen = torch.Generator().manual_seed(4)
    (W, b), _ = make_weights("linear", gen)
    q, k, v, eta = make_tokens(2, 41, gen, eta_max=0.3)
    one = torch.ones(2, 41, H, 1, dtype=torch.float64)
    state0 = torch.cat([W, b[:, None]], dim=1).expand(2, H, D + 1, D)  # [B, H, d + 1, d]
    o, S = delta_rule(torch.cat([q, one], -1), torch.cat([k, one], -1), v - k, eta, scale=1.0,
                      initial_state=state0, backend="naive")
    for backend in ("naive", "chunk"):
        z, state = ttt(q, k, v, eta, (W, b), mini_batch=1, backend=backend)
        torch.testing.assert_close(z, q + o, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(torch.cat([state[0], state[1][:, :, None]], 2), S, rtol=1e-10, atol=1e-10)


def test_naive_loss_falls_along_the_inner_steps():
    # Inner training on one repeated pair (k, v): the reconstruction error of f(k) falls every mini-batch.
    gen = torch.Generator().manual_seed(5)
    weights, norm = make_weights("linear", gen)
    k = torch.randn(1, 1, H, D, generator=gen, dtype=torch.float64).expand(1, 32, H, D)
    v = torch.randn(1, 1, H, D, generator=gen, dtype=torch.float64).expand(1, 32, H, D)
    z, _ = ttt(k, k, v, torch.full((1, 32, H), 0.05, dtype=torch.float64), tuple(weights), norm=tuple(norm),
               mini_batch=4, backend="naive")
    err = (z - v).pow(2).sum((-1, -2))[0]  # [32]: f(q_t; theta_t) with q = k
    per_batch = err.reshape(8, 4)[:, -1]
    assert (per_batch[1:] < per_batch[:-1]).all()


def test_bad_inputs_are_refused():
    gen = torch.Generator().manual_seed(6)
    weights, norm = make_weights("linear", gen)
    q, k, v, eta = make_tokens(1, 5, gen)
    with pytest.raises(InvalidInputError, match="weights"):
        ttt(q, k, v, eta, tuple(weights[:1]))
    with pytest.raises(InvalidInputError, match="W must have shape"):
        ttt(q, k, v, eta, (weights[0][:, :3], weights[1]))
    with pytest.raises(InvalidInputError, match="mini_batch"):
        ttt(q, k, v, eta, tuple(weights), mini_batch=0)
    with pytest.raises(InvalidInputError, match="eta"):
        ttt(q, k, v, eta[..., :1], tuple(weights))
    with pytest.raises(InvalidInputError, match="state"):
        ttt(q, k, v, eta, tuple(weights), initial_state=(weights[0],))


@pytest.mark.parametrize(("T", "mini_batch", "use_norm"), [(37, 16, True), (23, 5, False), (16, 16, True)])
def test_ttt_linear_written_out_backward_is_exact_in_float64(T, mini_batch, use_norm, monkeypatch):
    # TTT-Linear's dual form runs as one autograd.Function with its backward written out
    # (linear_backward.py); in float64 it must agree with autograd through the loop of explicit gradient
    # steps to round-off, for the outputs, the final state and every input gradient.
    from alloyml.kernels.ttt import linear_backward

    calls = []
    apply = linear_backward.TTTLinearDualForm.apply
    monkeypatch.setattr(linear_backward.TTTLinearDualForm, "apply", lambda *a: (calls.append(1), apply(*a))[1])
    gen = torch.Generator().manual_seed(100 + T)
    weights, norm = make_weights("linear", gen)
    leaves = make_tokens(2, T, gen, eta_max=0.5 if use_norm else 0.1) + weights + (norm if use_norm else [])
    (got, count) = outputs_and_grads(op("chunk", "linear", use_norm, mini_batch), leaves, torch.float64)
    (want, want_count) = outputs_and_grads(op("naive", "linear", use_norm, mini_batch), leaves, torch.float64)
    assert calls, "the written-out backward was not used"
    assert torch.equal(count, want_count)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, b.abs().max().item()), i
