"""Group-testing Shapley against exact Shapley (closed form of the airport game and enumeration)."""

import math

import numpy as np
import pytest

from alloyml.errors import InvalidInputError
from alloyml.valuation import AdditiveGame, AirportGame, exact_shapley, group_testing_samples, group_testing_shapley


def test_sample_bound_by_hand_for_three_points():
    # n = 3: Z = 2 (1 + 1/2) = 3, q = (1/2, 1/2), q_tot = 1/3 * 1/2 + 1/2 * (1 + 2*2*(2-3)/6) = 1/3
    one_minus = 1 - (1 / 3) ** 2
    u = 0.5 / (3 * 2.0 * math.sqrt(3) * one_minus)
    h = (1 + u) * math.log(1 + u) - u
    expected = math.ceil(8 * math.log(3 * 2 / (2 * 0.1)) / (one_minus * h))
    assert group_testing_samples(3, 0.5, 0.1, utility_range=2.0) == expected


def test_within_epsilon_of_exact_shapley():
    costs = [0.1, 0.25, 0.4, 0.7, 1.0]
    game = AirportGame(costs)
    exact = exact_shapley(AirportGame(costs)).values
    np.testing.assert_allclose(exact, game.shapley_values(), atol=1e-12)  # the oracle agrees with itself
    epsilon, delta = 0.5, 0.05
    samples = group_testing_samples(5, epsilon, delta, utility_range=1.0)
    result = group_testing_shapley(game, samples, epsilon=epsilon, seed=1)
    assert np.linalg.norm(result.values - exact) <= epsilon
    assert result.values.sum() == pytest.approx(game(np.arange(5)))  # efficiency is a constraint
    # the sampled pairwise differences are always consistent, so the feasibility programme is met exactly
    assert result.params["violation"] <= 1e-9 < epsilon / (2 * math.sqrt(5))
    assert result.utility_evaluations == samples + 1
    # far more accurate than the worst case on this easy game
    assert np.linalg.norm(result.values - exact) < 0.1


def test_converges_on_additive_game():
    weights = np.array([0.5, -0.2, 0.1, 0.3, 0.0, 0.25])
    errors = [np.linalg.norm(group_testing_shapley(AdditiveGame(weights), t, epsilon=1.0, seed=2).values - weights)
              for t in (500, 20000)]
    assert errors[1] < errors[0] and errors[1] < 0.05


def test_seeded_and_bad_input():
    game = AirportGame([0.1, 0.2, 0.3, 0.4])
    a = group_testing_shapley(game, 300, epsilon=1.0, seed=5).values
    np.testing.assert_array_equal(a, group_testing_shapley(game, 300, epsilon=1.0, seed=5, progress=True).values)
    with pytest.raises(InvalidInputError, match="n_samples"):
        group_testing_shapley(game, 0, epsilon=1.0)
    with pytest.raises(InvalidInputError, match="epsilon"):
        group_testing_shapley(game, 10, epsilon=0.0)
    with pytest.raises(InvalidInputError, match="n >= 3"):
        group_testing_samples(2, 0.1, 0.1)
