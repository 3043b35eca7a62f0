"""The one-node diagonal scans (common/scan_autograd.py) against a plain loop over time in float64: states
and the gradients of log_a and b (from the loop's autograd), over odd lengths around the chunk size, packed
cuts, and decays from ~1 (log a = -1e-4) to fast (log a = -20)."""

from __future__ import annotations

import pytest
import torch

from alloyml.kernels.common.scan_autograd import constant_decay_linear_scan, linear_scan


def loop_scan(log_a, b, first):
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(b.shape[1]):
        a = log_a[:, t].exp()
        if first is not None and first[t]:
            a = torch.zeros_like(a)
        h = a * h + b[:, t]
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", [1, 5, 15, 16, 17, 300, 401])
@pytest.mark.parametrize("rate", [1e-4, 0.1, 20.0])
@pytest.mark.parametrize("cuts", [False, True])
def test_scan_matches_loop_with_gradients(T, rate, cuts):
    gen = torch.Generator().manual_seed(T)
    log_a = (-rate * torch.rand(2, T, 3, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    b = torch.randn(2, T, 3, 4, generator=gen, dtype=torch.float64).requires_grad_()
    first = None
    if cuts:
        first = torch.zeros(T, dtype=torch.bool)
        first[torch.arange(0, T, 11)] = True
    w = torch.randn(2, T, 3, 4, generator=gen, dtype=torch.float64)
    got = linear_scan(log_a, b, first)
    want = loop_scan(log_a, b, first)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    want_grads = torch.autograd.grad((want * w).sum(), (log_a, b), allow_unused=True)  # T = 1 cut: no log_a
    for g, e, x in zip(torch.autograd.grad((got * w).sum(), (log_a, b)), want_grads, (log_a, b), strict=True):
        torch.testing.assert_close(g, torch.zeros_like(x) if e is None else e, rtol=1e-10, atol=1e-12)


def test_broadcast_log_a_gets_a_reduced_gradient():
    gen = torch.Generator().manual_seed(1)
    log_a = (-torch.rand(1, 40, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    b = torch.randn(3, 40, 5, generator=gen, dtype=torch.float64).requires_grad_()
    got = torch.autograd.grad(linear_scan(log_a, b).sum(), log_a)[0]
    want = torch.autograd.grad(loop_scan(log_a.expand(3, -1, -1), b, None).sum(), log_a)[0]
    assert got.shape == log_a.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 16, 17, 300])
@pytest.mark.parametrize("complex_decay", [False, True])
def test_constant_decay_scan_matches_loop_with_gradients(T, complex_decay):
    gen = torch.Generator().manual_seed(T)
    modulus_log = -torch.tensor([1e-4, 1e-2, 0.5, 3.0], dtype=torch.float64)  # slow to fast forgetting
    if complex_decay:  # phases up to 2 pi, as the LRU's initialisation
        log_a = torch.complex(modulus_log, 2 * torch.pi * torch.rand(4, generator=gen, dtype=torch.float64))
        b = torch.randn(2, T, 4, generator=gen, dtype=torch.complex128)
        w = torch.randn(2, T, 4, generator=gen, dtype=torch.complex128)
    else:
        log_a = modulus_log.clone()
        b = torch.randn(2, T, 4, generator=gen, dtype=torch.float64)
        w = torch.randn(2, T, 4, generator=gen, dtype=torch.float64)
    log_a.requires_grad_()
    b.requires_grad_()
    got = constant_decay_linear_scan(log_a, b)
    a = log_a.exp()
    h, steps = torch.zeros_like(b[:, 0]), []
    for t in range(T):
        h = a * h + b[:, t]
        steps.append(h)
    want = torch.stack(steps, 1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    loss = (lambda y: (y * w).real.sum())
    for g, e in zip(torch.autograd.grad(loss(got), (log_a, b)), torch.autograd.grad(loss(want), (log_a, b)),
                    strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
