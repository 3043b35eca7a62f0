"""The exact cascade optimiser against FrugalGPT-style simulation of every combination."""

import numpy as np
import pytest

from alloyml.errors import InvalidInputError
from alloyml.routing.optimizer import (
    grid_search_frontier,
    optimize_cascade,
    pareto,
    simulate_cascade,
)


def _instance(seed, n=24, m=4, levels=6):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (n, m)) / (levels - 1)  # ties on purpose
    correct = rng.random((n, m)) < np.linspace(0.3, 0.8, m)
    cost = rng.random((n, m)) * np.arange(1, m + 1)
    return scores, correct, cost


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_length", [1, 2, 3])
def test_frontier_equals_brute_force_over_all_distinct_thresholds(seed, max_length):
    scores, correct, cost = _instance(seed)
    fast = optimize_cascade(scores, correct, cost, max_length, n_thresholds=None)
    slow = grid_search_frontier(scores, correct, cost, max_length, n_thresholds=None)
    np.testing.assert_allclose(fast.cost, slow.cost, rtol=1e-12)
    np.testing.assert_allclose(fast.accuracy, slow.accuracy, rtol=1e-12)


def test_quantile_candidates_and_best_under_budget_match_brute_force():
    scores, correct, cost = _instance(7, n=60, m=4, levels=40)
    fast = optimize_cascade(scores, correct, cost, 3, n_thresholds=5)
    slow = grid_search_frontier(scores, correct, cost, 3, n_thresholds=5)
    np.testing.assert_allclose(fast.accuracy, slow.accuracy)
    for budget in np.linspace(slow.cost[0], slow.cost[-1] * 1.1, 9):
        feasible = slow.cost <= budget
        assert fast.accuracy[fast.best_under(budget)] == pytest.approx(slow.accuracy[feasible].max())


def test_frontier_points_reproduce_by_simulation_and_are_monotone():
    rng = np.random.default_rng(3)
    scores, correct, cost = rng.random((400, 5)), rng.random((400, 5)) < 0.6, rng.random((400, 5))
    frontier = optimize_cascade(scores, correct, cost, 3, n_thresholds=16)
    assert np.all(np.diff(frontier.cost) > 0) and np.all(np.diff(frontier.accuracy) > 0)
    for p in frontier.points:
        _, got, paid = simulate_cascade(scores, correct, cost, p.chain, p.thresholds)
        assert got.mean() == pytest.approx(p.accuracy) and paid.mean() == pytest.approx(p.mean_cost)


def test_pareto_prefilter_agrees_with_quadratic_definition():
    rng = np.random.default_rng(0)
    cost = rng.integers(0, 300, 30_000).astype(float)  # many exact ties
    accuracy = rng.integers(0, 300, 30_000).astype(float)
    front = pareto(cost, accuracy)
    # A point is on the frontier iff no other point is at most as costly and strictly more accurate,
    # or strictly cheaper and at least as accurate; one representative per (cost, accuracy) pair.
    order = np.lexsort((-accuracy, cost))
    expected, best = [], -np.inf
    for i in order:
        if accuracy[i] > best:
            expected.append((cost[i], accuracy[i]))
            best = accuracy[i]
    assert [(cost[i], accuracy[i]) for i in front] == expected


def test_simulation_by_hand():
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    correct = np.array([[False, True], [True, True]])
    cost = np.array([[1.0, 5.0], [2.0, 6.0]])
    stage, got, paid = simulate_cascade(scores, correct, cost, (0, 1), (0.5,))
    assert stage.tolist() == [0, 1] and got.tolist() == [False, True] and paid.tolist() == [1.0, 8.0]


def test_bad_inputs():
    with pytest.raises(InvalidInputError, match="one shape"):
        optimize_cascade(np.zeros((3, 2)), np.zeros((3, 3)), np.zeros((3, 2)))
    with pytest.raises(InvalidInputError, match="below the cheapest"):
        optimize_cascade(np.zeros((3, 2)), np.ones((3, 2)), np.ones((3, 2))).best_under(0.5)
