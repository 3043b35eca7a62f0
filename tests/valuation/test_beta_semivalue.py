"""Beta(alpha, beta) Shapley against subset enumeration whose weights are written out here, not taken from
alloyml: Kwon & Zou (2022), w(n, k) = B(k + beta, n - 1 - k + alpha) / B(alpha, beta) for each subset S of
size k without the point, in exact rational arithmetic (integer alpha, beta), so a swapped or mis-normalised
weight in `Beta` fails. Also the exact small strata of `SizeSampler(exact_sizes=...)`."""

import itertools
from fractions import Fraction
from math import factorial

import numpy as np
import pytest

from alloyml.errors import ConfigError
from alloyml.valuation import (
    AirportGame,
    Beta,
    MaxEvaluations,
    MaxSamples,
    OwenSampler,
    PermutationSampler,
    SizeSampler,
    StratifiedSampler,
    beta_shapley,
    exact_semivalues,
    sampled_semivalues,
)
from alloyml.valuation.games import Game

ASYMMETRIC = [(16, 1), (1, 16), (4, 2)]


class TableGame(Game):
    """U(S) drawn at random for every one of the 2^n subsets: no structure for a wrong weight to hide in."""

    def __init__(self, n, seed):
        self.n, self.fits = n, 0
        self.table = np.random.default_rng(seed).normal(size=2**n)
        self.table[0] = 0.0

    def value(self, subset):
        return self.table[int(np.sum(1 << subset.astype(np.int64)))]


GAMES = {"airport": AirportGame(np.random.default_rng(3).uniform(0, 1, 8)), "table": TableGame(7, seed=5)}


def _beta_function(a: int, b: int) -> Fraction:
    return Fraction(factorial(a - 1) * factorial(b - 1), factorial(a + b - 1))


def _weight(n: int, k: int, alpha: int, beta: int) -> Fraction:
    return _beta_function(k + beta, n - 1 - k + alpha) / _beta_function(alpha, beta)


def _enumerated(game, alpha, beta) -> np.ndarray:
    """value_i = sum over S subset of N \\ {i} of w(n, |S|) (U(S + i) - U(S)), every subset visited."""
    n = game.n
    values = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            w = float(_weight(n, k, alpha, beta))
            for subset in itertools.combinations(others, k):
                values[i] += w * (game.value(np.array([*subset, i])) - game.value(np.array(subset, np.int64)))
    return values


def _within_stderr(result, exact, z=4.0):
    """Within z standard errors; a point with stderr 0 (every sample the same) must be exact."""
    assert np.all(np.isfinite(result.stderr)) and np.any(result.stderr > 0)
    assert np.all(np.abs(result.values - exact) <= z * result.stderr + 1e-12), (result.values - exact) / result.stderr


@pytest.mark.parametrize("game", GAMES.values(), ids=GAMES.keys())
@pytest.mark.parametrize("alpha,beta", ASYMMETRIC)
def test_exact_beta_values_equal_the_enumeration_with_the_closed_form_weights(game, alpha, beta):
    expected = _enumerated(game, alpha, beta)
    np.testing.assert_allclose(exact_semivalues(game, Beta(alpha, beta)).values, expected, rtol=1e-10, atol=1e-12)
    swapped = _enumerated(game, beta, alpha)  # what an implementation with alpha and beta exchanged returns
    assert np.abs(swapped - expected).max() > 1e-2


def test_the_size_zero_weight_of_beta_16_1_is_16_over_n_plus_15():
    # B(1, n - 1 + 16) / B(16, 1) = (1 / (n + 15)) / (1 / 16): no Beta function, no alloyml
    for n in (5, 40, 100):
        assert Beta(16, 1).size_probabilities(n)[0] == pytest.approx(16 / (n + 15), rel=1e-12)
        assert Beta(1, 16).size_probabilities(n)[-1] == pytest.approx(16 / (n + 15), rel=1e-12)


@pytest.mark.parametrize("sampler", [SizeSampler(exact_sizes=0), SizeSampler(), SizeSampler(exact_sizes=2),
                                     PermutationSampler(), StratifiedSampler("uniform"), OwenSampler(n_q=6)],
                         ids=["size", "size_exact1", "size_exact2", "permutation", "stratified", "owen"])
@pytest.mark.parametrize("alpha,beta", ASYMMETRIC)
def test_sampled_beta_values_within_stderr_of_the_enumeration(sampler, alpha, beta):
    game = GAMES["table"]
    expected = _enumerated(game, alpha, beta)
    result = sampled_semivalues(game, Beta(alpha, beta), sampler, MaxSamples(400), seed=11)
    _within_stderr(result, expected)
    swapped = _enumerated(game, beta, alpha)
    assert np.any(np.abs(result.values - swapped) > 4 * result.stderr + 1e-12)  # the estimate tells them apart


def test_swapping_alpha_and_beta_changes_the_values():
    game = GAMES["airport"]
    small, large = exact_semivalues(game, Beta(16, 1)).values, exact_semivalues(game, Beta(1, 16)).values
    assert np.abs(small - large).max() > 0.05
    # on the airport game (U = -max cost) a point's marginal is -its own cost on the empty set and
    # shrinks as S grows, so favouring small subsets (Beta(16, 1)) gives the more negative values
    assert np.all(small <= large + 1e-12)
    np.testing.assert_allclose(small, _enumerated(game, 16, 1), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(large, _enumerated(game, 1, 16), rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------- SizeSampler: exact small strata
@pytest.mark.parametrize("alpha,beta", ASYMMETRIC)
def test_the_exact_size_zero_stratum_is_the_enumerated_one(alpha, beta):
    game = GAMES["table"]
    n = game.n
    # the size-0 part of value_i: w(n, 0) (U({i}) - U(empty)), nothing sampled
    size_zero = np.array([float(_weight(n, 0, alpha, beta)) * game.value(np.array([i])) for i in range(n)])
    context = SizeSampler(exact_sizes=1).prepare(game, Beta(alpha, beta))
    np.testing.assert_allclose(context["exact"], size_zero, rtol=1e-12, atol=1e-15)
    assert context["sizes"][0] == 0 and context["sizes"].sum() == pytest.approx(1.0)
    assert context["rest"] == pytest.approx(1 - float(_weight(n, 0, alpha, beta)), rel=1e-12)
    # sizes 0 and 1 (the second term: every pair, weighted by w(n, 1))
    size_one = np.array([float(_weight(n, 1, alpha, beta)) * sum(
        game.value(np.array([j, i])) - game.value(np.array([j])) for j in range(n) if j != i) for i in range(n)])
    np.testing.assert_allclose(SizeSampler(exact_sizes=2).prepare(game, Beta(alpha, beta))["exact"],
                               size_zero + size_one, rtol=1e-12, atol=1e-15)


def test_a_point_whose_marginals_vary_only_at_size_zero_gets_its_exact_value_with_no_noise():
    # airport: the cheapest point adds -its cost on the empty set and 0 to any other subset
    game = GAMES["airport"]
    cheapest = int(np.argmin(game.costs))
    exact = exact_semivalues(game, Beta(16, 1)).values
    result = beta_shapley(game, MaxSamples(5), seed=1)  # the default SizeSampler(exact_sizes=1)
    assert result.values[cheapest] == pytest.approx(-game.costs[cheapest] * 16 / (game.n + 15), rel=1e-12)
    assert result.values[cheapest] == pytest.approx(exact[cheapest], rel=1e-12)
    assert result.stderr[cheapest] == 0
    noisy = beta_shapley(game, MaxSamples(5), seed=1, sampler=SizeSampler(exact_sizes=0))
    assert noisy.stderr[cheapest] > 0  # sampled, size 0 is drawn in some samples and not in others


def test_exact_strata_lower_the_error_at_the_same_evaluations():
    game = GAMES["table"]
    expected = _enumerated(game, 16, 1)

    def rmse(exact_sizes):
        runs = [beta_shapley(game, MaxEvaluations(300), seed=s, sampler=SizeSampler(exact_sizes)).values
                for s in range(40)]
        return np.sqrt(np.mean((np.array(runs) - expected) ** 2))

    assert rmse(1) < 0.8 * rmse(0)


def test_exact_strata_count_their_evaluations_and_are_deterministic_across_batch_sizes():
    game = GAMES["table"]
    n = game.n
    one = beta_shapley(game, MaxSamples(6), seed=2, batch_size=1)
    four = beta_shapley(game, MaxSamples(6), seed=2, batch_size=4)
    np.testing.assert_array_equal(one.values, four.values)
    np.testing.assert_array_equal(one.stderr, four.stderr)
    assert one.utility_evaluations == (1 + n) + 6 * 2 * n  # U(empty), the n singletons, then 2n a sample
    two = beta_shapley(game, MaxSamples(6), seed=2, sampler=SizeSampler(exact_sizes=2))
    assert two.utility_evaluations == (1 + n + n * (n - 1) // 2) + 6 * 2 * n


def test_exact_sizes_is_checked():
    game = GAMES["table"]
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ConfigError, match="exact_sizes"):
            beta_shapley(game, MaxSamples(2), sampler=SizeSampler(exact_sizes=bad))
    big = TableGame(3, seed=0)
    big.n = 60  # only the count matters: C(60, 0) + ... + C(60, 4) > the limit, refused before any value
    with pytest.raises(ConfigError, match="exact_sizes=4"):
        SizeSampler(exact_sizes=4).prepare(big, Beta(16, 1))
    # exact_sizes >= n: every stratum but the largest (one subset) is exact, so the values are exact
    result = beta_shapley(game, MaxSamples(2), sampler=SizeSampler(exact_sizes=50), seed=0)
    np.testing.assert_allclose(result.values, _enumerated(game, 16, 1), rtol=1e-10, atol=1e-12)
