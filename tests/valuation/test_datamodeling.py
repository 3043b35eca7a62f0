"""LDS against a hand-computed case, scipy's Spearman, and linear models whose exact attributions are known."""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge

from alloyml.errors import InvalidInputError
from alloyml.valuation import linear_datamodeling_score, random_subsets


def test_hand_computed_case_with_ties():
    attributions = np.array([[1.0, 2.0, 4.0], [-1.0, 0.0, 0.0]])
    subsets = [[0], [1], [0, 1], [2]]
    outputs = np.array([[0.1, 4.0], [0.3, 3.0], [0.2, 2.0], [0.9, 1.0]])
    result = linear_datamodeling_score(attributions, subsets, outputs)
    # test 0: predicted 1,2,3,4 vs actual ranks 1,3,2,4: 1 - 6 * 2 / (4 * 15) = 0.8
    # test 1: predicted -1,0,-1,0 (ranks 1.5,3.5,1.5,3.5) vs ranks 4,3,2,1: -2 / (2 sqrt 5)
    np.testing.assert_allclose(result.per_test, [0.8, -1 / math.sqrt(5)], atol=1e-12)
    assert result.score == pytest.approx((0.8 - 1 / math.sqrt(5)) / 2)
    assert result.undefined == 0


def test_matches_scipy_spearman_and_mask_input():
    rng = np.random.default_rng(0)
    tau = rng.normal(size=(5, 12))
    masks = random_subsets(12, 30, 0.5, seed=1)
    assert np.all(masks.sum(1) == 6)
    outputs = masks @ tau.T + rng.normal(scale=2.0, size=(30, 5))
    expected = [spearmanr(masks @ tau[t], outputs[:, t]).statistic for t in range(5)]
    result = linear_datamodeling_score(tau, masks, outputs)
    np.testing.assert_allclose(result.per_test, expected, atol=1e-12)
    same = linear_datamodeling_score(tau, [np.flatnonzero(m) for m in masks], outputs)
    assert same.score == result.score


def _linear_data(seed=0, n_train=40, n_test=6, d=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train, d))
    y = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.3, size=n_train)
    return x, y, rng.normal(size=(n_test, d))


def test_exact_attributions_of_an_additive_linear_model_give_one():
    # one gradient step of squared loss from w = 0: w_S = lr * sum_{j in S} y_j x_j, so the output on
    # x_t is exactly sum_j lr * y_j (x_t . x_j): those are the exact attributions
    x, y, x_test = _linear_data()
    lr = 0.01
    masks = random_subsets(len(y), 50, seed=2)
    outputs = np.stack([x_test @ (lr * (y[m] @ x[m])) for m in masks])
    exact = lr * (x_test @ x.T) * y[None, :]
    assert linear_datamodeling_score(exact, masks, outputs).score == pytest.approx(1.0, abs=1e-12)
    shuffled = exact[:, np.random.default_rng(3).permutation(len(y))]
    assert abs(linear_datamodeling_score(shuffled, masks, outputs).score) < 0.3


def test_strongly_regularised_ridge_is_nearly_linear_in_its_data():
    # Ridge(alpha) without intercept: w_S = (X_S'X_S + alpha I)^-1 X_S'y_S -> sum_j y_j x_j / alpha as
    # alpha grows; retrained with scikit-learn, the first-order attributions reach LDS close to 1
    x, y, x_test = _linear_data(seed=4)
    alpha = 500.0
    masks = random_subsets(len(y), 60, seed=5)
    outputs = np.stack([Ridge(alpha=alpha, fit_intercept=False).fit(x[m], y[m]).predict(x_test) for m in masks])
    attributions = (x_test @ x.T) * y[None, :] / alpha
    assert linear_datamodeling_score(attributions, masks, outputs).score > 0.95


def test_bad_input_and_undefined_policy():
    tau = np.ones((2, 4))
    masks = random_subsets(4, 5, seed=0)
    with pytest.raises(InvalidInputError, match="outputs must have shape"):
        linear_datamodeling_score(tau, masks, np.zeros((4, 2)))
    with pytest.raises(InvalidInputError, match="non-finite"):
        linear_datamodeling_score(tau, masks, np.full((5, 2), np.nan))
    with pytest.raises(InvalidInputError, match="outside"):
        linear_datamodeling_score(tau, [[0, 9], [1], [2]], np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match="at least 3"):
        linear_datamodeling_score(tau, masks[:2], np.zeros((2, 2)))
    # equal-size subsets and equal attributions: predictions constant -> undefined for every test point
    with pytest.raises(InvalidInputError, match="undefined"):
        linear_datamodeling_score(tau, masks, np.arange(10.0).reshape(5, 2))
    mixed = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    result = linear_datamodeling_score(mixed, masks, np.arange(10.0).reshape(5, 2))
    assert result.undefined == 1 and np.isnan(result.per_test[1]) and result.score == result.per_test[0]
