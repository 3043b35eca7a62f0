"""TracIn and influence functions do not depend on how the loss reduces its batch, nor on batch_size; the
solvers report on themselves (CG residual, LiSSA divergence)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alloyml.errors import ConfigError
from alloyml.valuation.influence import influence_functions, self_influence, tracin
from alloyml.valuation.influence.reduction import detect_reduction
from tests.valuation.influence.test_tracin import _checkpoints, _data, _explicit_influence, _explicit_tracin, _mlp

LOSSES = {reduction: functools.partial(F.cross_entropy, reduction=reduction) for reduction in ("mean", "sum", "none")}


def test_the_reduction_is_detected_on_a_probe_batch():
    model = _mlp()
    x, y = _data(6, seed=3)
    assert {name: detect_reduction(model, loss, x, y) for name, loss in LOSSES.items()} == \
        {"mean": "mean", "sum": "sum", "none": "none"}
    weighted = lambda out, t: (F.cross_entropy(out, t, reduction="none") * torch.arange(1, len(t) + 1)).mean()
    assert detect_reduction(model, weighted, x, y) is None  # neither: per-example calls only


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_tracin_scores_do_not_depend_on_the_reduction_or_batch_size(reduction):
    """A sum-reduced loss used to give batch-length-times the scores; batch_size 8 vs 256 changed them."""
    model = _mlp()  # every parameter in a Linear layer: the factored path, which sees whole batches
    train, test = _data(40, seed=1), _data(9, seed=2)
    checkpoints = _checkpoints(model)
    expected = _explicit_tracin(model, checkpoints, train, test)  # one backward pass per example
    for batch_size in (8, 256):
        scores = tracin(model, checkpoints, train, test, LOSSES[reduction], batch_size=batch_size).scores
        np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-12)
    mean = self_influence(model, checkpoints, train, LOSSES["mean"], batch_size=8).values
    np.testing.assert_allclose(self_influence(model, checkpoints, train, LOSSES[reduction], batch_size=32).values,
                               mean, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_influence_functions_do_not_depend_on_the_reduction(reduction):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    train, test = _data(30, d_in=4, seed=10), _data(3, d_in=4, seed=11)
    expected = _explicit_influence(model, train, test, 0.2)  # Hessian of the mean loss, inverted explicitly
    scores = influence_functions(model, train, test, LOSSES[reduction], damping=0.2, max_iter=60)
    np.testing.assert_allclose(scores.scores, expected, rtol=1e-6, atol=1e-9)
    assert scores.params["cg_residual"] < 1e-8


def test_cg_reports_its_residual_and_warns_when_it_stops_short():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    train, test = _data(30, d_in=4, seed=10), _data(2, d_in=4, seed=11)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        short = influence_functions(model, train, test, F.cross_entropy, damping=1e-3, max_iter=1)
    assert short.params["cg_residual"] > 1e-3


def test_lissa_with_a_too_small_scale_raises_instead_of_returning_huge_numbers():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    train, test = _data(30, d_in=4, seed=10), _data(2, d_in=4, seed=11)
    with pytest.raises(ConfigError, match="lissa_scale=0.01"):
        influence_functions(model, train, test, F.cross_entropy, solver="lissa", damping=0.2, lissa_depth=300,
                            lissa_scale=0.01, lissa_batch=30)


def test_non_finite_inputs_are_refused_before_any_gradient():
    from alloyml.errors import InvalidInputError

    model = _mlp()
    x, y = _data(10, seed=1)
    x[3, 2] = float("nan")
    with pytest.raises(InvalidInputError, match="train inputs hold 1 non-finite"):
        tracin(model, _checkpoints(model), (x, y), _data(3, seed=2), F.cross_entropy)
