"""EK-FAC influence against an explicit damped empirical Fisher, and streamed training gradients against the
materialised [n_train, P] computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alloyml.errors import InvalidInputError
from alloyml.valuation.influence import GradientFeaturizer, influence_functions
from alloyml.valuation.influence import ekfac as ekfac_module
from alloyml.valuation.influence.ekfac import EKFAC, ekfac_influence


def _per_example_grads(model, loss_fn, x, y):
    """One backward pass per example (the oracle), parameters in named_parameters order."""
    rows = []
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        loss_fn(model(xi[None]), yi[None]).backward()
        rows.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
    model.zero_grad()
    return torch.stack(rows)


def _explicit_fisher_influence(model, loss_fn, train, test, damping):
    """Dense empirical Fisher F = mean_i g_i g_iᵀ, then g_trainᵀ (F + λI)⁻¹ g_test by a solve."""
    g_train = _per_example_grads(model, loss_fn, *train)
    g_test = _per_example_grads(model, loss_fn, *test)
    fisher = g_train.T @ g_train / len(g_train)
    solved = torch.linalg.solve(fisher + damping * torch.eye(len(fisher), dtype=fisher.dtype), g_test.T)
    return (g_train @ solved).numpy()


def _product_regression(seed=0):
    """A linear layer with MSE loss on a dataset that pairs every input a_k with every residual r_m: the
    inputs and the output gradients (∝ r) are independent over the set, so the Fisher is exactly A ⊗ G."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2).double()
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(6, 3, generator=g, dtype=torch.float64)
    residuals = torch.randn(5, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        outputs = model(inputs)
    x = inputs.repeat_interleave(len(residuals), dim=0)
    y = (outputs[:, None, :] - residuals[None, :, :]).reshape(-1, 2)
    return model, (x, y)


def test_ekfac_equals_explicit_fisher_inverse_when_kronecker_factored():
    model, train = _product_regression()
    g = torch.Generator().manual_seed(5)
    test = (torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64))
    damping = 0.05
    expected = _explicit_fisher_influence(model, F.mse_loss, train, test, damping)
    got = ekfac_influence(model, train, test, F.mse_loss, damping=damping, batch_size=7)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-8, atol=1e-12)
    assert got.method == "influence_ekfac"
    # the same through influence_functions, with a sum-reduced loss (each example's own gradient either way)
    summed = influence_functions(model, train, test, lambda o, t: F.mse_loss(o, t, reduction="sum") / 2,
                                 solver="ekfac", damping=damping)
    half = _explicit_fisher_influence(model, lambda o, t: F.mse_loss(o, t, reduction="sum") / 2, train, test, damping)
    np.testing.assert_allclose(summed.scores, half, rtol=1e-8, atol=1e-12)
    aggregated = ekfac_influence(model, train, test, F.mse_loss, damping=damping, aggregate_test=True)
    np.testing.assert_allclose(aggregated.scores[:, 0], expected.mean(axis=1), rtol=1e-8, atol=1e-12)


def test_ekfac_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_basis():
    """On an MLP (Fisher not Kronecker-factored) EK-FAC is an approximation; what it must get exactly is
    Λ = diag((Q_A ⊗ Q_G)ᵀ F (Q_A ⊗ Q_G)) per layer, checked from per-example gradients by backprop."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    curvature = EKFAC(model, F.cross_entropy, batch_size=16).fit(x, y)
    grads = _per_example_grads(model, F.cross_entropy, x, y)
    offset = 0
    for basis, layer in zip(curvature.bases_, (model[0], model[2]), strict=True):
        out_dim, in_dim = layer.weight.shape
        weight = grads[:, offset:offset + out_dim * in_dim].reshape(-1, out_dim, in_dim)
        bias = grads[:, offset + out_dim * in_dim:offset + out_dim * (in_dim + 1)]
        offset += out_dim * (in_dim + 1)
        matrices = torch.cat([weight, bias[:, :, None]], dim=2)  # [n, o, k]: ∇[W | b]
        rotated = basis.q_g.T @ matrices @ basis.q_a
        np.testing.assert_allclose(basis.eigenvalues.numpy(), rotated.pow(2).mean(0).numpy(), rtol=1e-9, atol=1e-14)
        # the factors' eigenvectors are those of A = E[a aᵀ] with a = [input, 1]
        a = torch.cat([x if layer is model[0] else torch.tanh(model[0](x)).detach(),
                       torch.ones(len(x), 1, dtype=x.dtype)], 1)
        cov_a = basis.q_a.T @ (a.T @ a / len(a)) @ basis.q_a
        np.testing.assert_allclose(cov_a.numpy(), np.diag(np.diag(cov_a.numpy())), atol=1e-10)


def test_ekfac_refuses_non_linear_selections_and_bad_damping():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2)).double()
    train = (torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))
    with pytest.raises(InvalidInputError, match="nn.Linear"):
        ekfac_influence(model, train, train, F.cross_entropy)
    with pytest.raises(InvalidInputError, match="damping"):
        ekfac_influence(model, train, train, F.cross_entropy, layers=["2."], damping=0.0)


class _RowCounter:
    """Records the largest batch of examples whose per-example gradients were held at once."""

    def __init__(self):
        self.largest = 0

    def wrap(self, fn):
        def counted(*args, **kwargs):
            rows = len(args[-2]) if len(args) >= 2 else len(kwargs["inputs"])
            self.largest = max(self.largest, rows)
            return fn(*args, **kwargs)
        return counted


def test_streamed_cg_influence_equals_materialised_and_bounds_the_batch(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    g = torch.Generator().manual_seed(3)
    train = (torch.randn(45, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (45,), generator=g))
    test = (torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g))
    damping = 0.1
    # materialised oracle: all [n_train, P] gradients, the dense Hessian of the mean loss, one solve
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_loss(vector):
        weight, bias = vector[:12].reshape(3, 4), vector[12:]
        return F.cross_entropy(train[0] @ weight.T + bias, train[1])

    hessian = torch.autograd.functional.hessian(mean_loss, flat)
    g_train = _per_example_grads(model, F.cross_entropy, *train)
    g_test = _per_example_grads(model, F.cross_entropy, *test)
    expected = (g_train @ torch.linalg.solve(hessian + damping * torch.eye(15, dtype=flat.dtype), g_test.T)).numpy()

    counter = _RowCounter()
    monkeypatch.setattr(GradientFeaturizer, "_batch", counter.wrap(GradientFeaturizer._batch))
    streamed = influence_functions(model, train, test, F.cross_entropy, damping=damping, batch_size=7, max_iter=60)
    np.testing.assert_allclose(streamed.scores, expected, rtol=1e-6, atol=1e-9)
    assert counter.largest == 7  # never more than one batch of per-example gradients (n_train = 45)


def test_streamed_ekfac_holds_one_batch(monkeypatch):
    model, train = _product_regression(seed=3)
    test = (train[0][:3], train[1][:3])
    whole = ekfac_influence(model, train, test, F.mse_loss, damping=0.1, batch_size=len(train[0]))
    counter = _RowCounter()
    monkeypatch.setattr(ekfac_module, "linear_factors", counter.wrap(ekfac_module.linear_factors))
    streamed = ekfac_influence(model, train, test, F.mse_loss, damping=0.1, batch_size=4)
    np.testing.assert_allclose(streamed.scores, whole.scores, rtol=1e-10, atol=1e-14)
    assert counter.largest == 4
