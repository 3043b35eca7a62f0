"""Every Shapley-type estimator against values known in closed form (games) or by enumeration."""

import numpy as np
import pytest

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.valuation import (
    AdditiveGame,
    AirportGame,
    Banzhaf,
    Beta,
    MaxSamples,
    MSRSampler,
    PermutationSampler,
    Shapley,
    SizeSampler,
    VotingGame,
    beta_shapley,
    exact_banzhaf,
    exact_semivalues,
    exact_shapley,
    msr_banzhaf,
    sampled_semivalues,
    tmc_shapley,
)

AIRPORT = AirportGame(np.random.default_rng(3).uniform(0, 1, 8))


def _within_stderr(result, exact, z=4.0):
    """Every estimate within z reported standard errors of the exact value (and some real spread)."""
    assert np.all(np.isfinite(result.stderr)) and np.all(result.stderr > 0)
    assert np.all(np.abs(result.values - exact) <= z * result.stderr), (result.values - exact) / result.stderr


@pytest.mark.parametrize("game", [VotingGame(8), AIRPORT, AdditiveGame([0.5, -1.0, 2.0, 0.0, 0.25])])
def test_exact_enumeration_matches_closed_form(game):
    np.testing.assert_allclose(exact_shapley(game).values, game.shapley_values(), atol=1e-12)
    np.testing.assert_allclose(exact_banzhaf(game).values, game.banzhaf_values(), atol=1e-12)


def test_beta_one_one_is_shapley_and_additive_game_is_fixed_by_every_semivalue():
    np.testing.assert_allclose(exact_semivalues(AIRPORT, Beta(1, 1)).values, AIRPORT.shapley_values(), atol=1e-12)
    additive = AdditiveGame([0.3, -0.2, 1.5, 0.7])
    for semivalue in (Beta(16, 1), Beta(4, 4), Banzhaf()):
        np.testing.assert_allclose(exact_semivalues(additive, semivalue).values, additive.weights, atol=1e-12)


@pytest.mark.parametrize("n", [5, 12, 40])
def test_size_probabilities_sum_to_one(n):
    for semivalue in (Shapley(), Banzhaf(), Beta(16, 1), Beta(2, 5)):
        p = semivalue.size_probabilities(n)
        assert p.shape == (n,) and abs(p.sum() - 1) < 1e-9
    np.testing.assert_allclose(Shapley().size_probabilities(n), np.full(n, 1 / n))


def test_permutation_shapley_within_stderr_of_closed_form():
    result = tmc_shapley(AIRPORT, MaxSamples(300), truncation_rtol=None, seed=0)
    _within_stderr(result, AIRPORT.shapley_values())
    assert result.counts.tolist() == [300] * 8 and result.params["samples"] == 300
    assert result.utility_evaluations > 0


def test_truncation_saves_evaluations_and_stays_close():
    game = AdditiveGame(np.r_[np.full(2, 1.0), np.full(18, 1e-4)])  # once both big ones are in, done
    full = tmc_shapley(game, MaxSamples(100), truncation_rtol=None, seed=1)
    truncated = tmc_shapley(game, MaxSamples(100), truncation_rtol=1e-2, seed=1)
    assert truncated.utility_evaluations < 0.8 * full.utility_evaluations
    np.testing.assert_allclose(truncated.values[:2], 1.0, atol=0.02)
    np.testing.assert_allclose(truncated.values[2:], 0.0, atol=1e-3)


def test_msr_banzhaf_within_stderr_of_closed_form():
    for game in (AIRPORT, VotingGame(8)):
        result = msr_banzhaf(game, MaxSamples(4000), seed=2)
        _within_stderr(result, game.banzhaf_values())
        assert result.utility_evaluations == 4000  # one evaluation per sample


@pytest.mark.parametrize("sampler", [SizeSampler(exact_sizes=0), PermutationSampler()])
def test_beta_shapley_within_stderr_of_enumeration(sampler):
    exact = exact_semivalues(AIRPORT, Beta(16, 1)).values
    result = beta_shapley(AIRPORT, MaxSamples(300), alpha=16, beta=1, sampler=sampler, seed=3)
    _within_stderr(result, exact)


def test_same_seed_same_values_and_different_seed_differs():
    a = msr_banzhaf(AIRPORT, MaxSamples(64), seed=7)  # default batch size 32: two batches
    b = msr_banzhaf(AIRPORT, MaxSamples(64), seed=7, batch_size=5)  # 13 batches, the last one cut
    c = msr_banzhaf(AIRPORT, MaxSamples(64), seed=8)
    assert a.params["batch_size"] != b.params["batch_size"]
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


def _beta_weight_closed_form(n, k, alpha, beta):
    """Kwon & Zou (2022), integer alpha, beta: w(n, k) = B(k + beta, n - 1 - k + alpha) / B(alpha, beta),
    with B(a, b) = (a - 1)! (b - 1)! / (a + b - 1)! in exact rational arithmetic."""
    from fractions import Fraction
    from math import factorial

    def beta_fn(a, b):
        return Fraction(factorial(a - 1) * factorial(b - 1), factorial(a + b - 1))

    return float(beta_fn(k + beta, n - 1 - k + alpha) / beta_fn(alpha, beta))


@pytest.mark.parametrize("alpha,beta", [(16, 1), (1, 16), (4, 2), (1, 1)])
def test_beta_weights_match_the_closed_form(alpha, beta):
    n = 9
    expected = np.array([_beta_weight_closed_form(n, k, alpha, beta) for k in range(n)])
    np.testing.assert_allclose(np.exp(Beta(alpha, beta).log_weight(n, np.arange(n))), expected, rtol=1e-12)
    # the normalisation: sum_k C(n-1, k) w(n, k) = 1
    from math import comb

    assert sum(comb(n - 1, k) * expected[k] for k in range(n)) == pytest.approx(1.0, abs=1e-12)
    if alpha != beta:  # swapping the parameters is a different semivalue
        swapped = np.exp(Beta(beta, alpha).log_weight(n, np.arange(n)))
        assert not np.allclose(swapped, expected)
    if alpha > beta == 1:  # Beta(alpha, 1) favours small subsets
        assert np.all(np.diff(expected) < 0)


def test_msr_refuses_other_semivalues_and_bad_parts():
    with pytest.raises(ConfigError, match="Banzhaf"):
        sampled_semivalues(AIRPORT, Shapley(), MSRSampler(), MaxSamples(1))
    with pytest.raises(ConfigError, match="semivalue"):
        sampled_semivalues(AIRPORT, "shapley", MSRSampler(), MaxSamples(1))
    with pytest.raises(ConfigError, match="stopping"):
        msr_banzhaf(AIRPORT, 10)
    with pytest.raises(InvalidInputError, match="n <= 20"):
        exact_shapley(VotingGame(22))


# ---------------------------------------------------------------- MSR samples, regression estimator
def test_msr_regression_is_exact_on_an_additive_game_once_there_are_enough_subsets():
    weights = np.random.default_rng(0).normal(size=12)
    game = AdditiveGame(weights)
    result = msr_banzhaf(game, MaxSamples(40), seed=1, estimator="regression")
    np.testing.assert_allclose(result.values, weights, atol=1e-10)  # U is linear: the fit has no residual
    np.testing.assert_allclose(result.stderr, 0.0, atol=1e-6)
    plain = msr_banzhaf(game, MaxSamples(40), seed=1)
    assert np.abs(plain.values - weights).max() > 0.1  # the difference of means is still noisy here
    assert result.utility_evaluations == plain.utility_evaluations == 40


def test_msr_regression_within_stderr_of_closed_form_and_tighter_than_the_means():
    for game in (AIRPORT, VotingGame(8)):
        result = msr_banzhaf(game, MaxSamples(1500), seed=2, estimator="regression")
        _within_stderr(result, game.banzhaf_values())
        plain = msr_banzhaf(game, MaxSamples(1500), seed=2)
        assert np.sqrt(np.mean((result.values - game.banzhaf_values()) ** 2)) < \
            np.sqrt(np.mean((plain.values - game.banzhaf_values()) ** 2))
    # bit-identical for any batch size, and the means before there are more subsets than unknowns
    a = msr_banzhaf(AIRPORT, MaxSamples(50), seed=3, estimator="regression", batch_size=1)
    b = msr_banzhaf(AIRPORT, MaxSamples(50), seed=3, estimator="regression", batch_size=16)
    np.testing.assert_array_equal(a.values, b.values)
    few = msr_banzhaf(AIRPORT, MaxSamples(5), seed=3, estimator="regression")
    np.testing.assert_array_equal(few.values, msr_banzhaf(AIRPORT, MaxSamples(5), seed=3).values)
    with pytest.raises(ConfigError, match="estimator"):
        msr_banzhaf(AIRPORT, MaxSamples(5), estimator="ols")


# ---------------------------------------------------------------- paired (subset + complement) MSR samples
@pytest.mark.parametrize("estimator", ["msr", "regression"])
def test_paired_msr_within_stderr_of_closed_form_and_unbiased_over_seeds(estimator):
    exact = AIRPORT.banzhaf_values()
    result = msr_banzhaf(AIRPORT, MaxSamples(750), seed=2, estimator=estimator, paired=True)
    assert result.utility_evaluations == 1500  # two per sample: S and its complement
    assert np.all(result.counts == 1500)  # every point: one "with" and one "without" value per sample
    _within_stderr(result, exact)
    # the mean over independent runs converges to the closed form: no bias beyond 4 of its standard errors
    runs = np.array([msr_banzhaf(AIRPORT, MaxSamples(50), seed=s, estimator=estimator, paired=True).values
                     for s in range(200)])
    bias_se = runs.std(0, ddof=1) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(0) - exact) <= 4 * bias_se), (runs.mean(0) - exact) / bias_se


def test_paired_regression_is_exact_on_an_additive_game_and_tighter_than_unpaired_on_the_airport_game():
    weights = np.random.default_rng(0).normal(size=12)
    paired = msr_banzhaf(AdditiveGame(weights), MaxSamples(20), seed=1, estimator="regression", paired=True)
    np.testing.assert_allclose(paired.values, weights, atol=1e-10)  # 40 rows, 13 unknowns, no residual
    exact = AIRPORT.banzhaf_values()

    def rmse(paired, samples):
        runs = np.array([msr_banzhaf(AIRPORT, MaxSamples(samples), seed=s, estimator="regression",
                                     paired=paired).values for s in range(60)])
        return np.sqrt(np.mean((runs - exact) ** 2))

    assert rmse(True, 100) < rmse(False, 200)  # the same 200 evaluations per run
    # bit-identical for any batch size
    a = msr_banzhaf(AIRPORT, MaxSamples(30), seed=3, estimator="regression", paired=True, batch_size=1)
    b = msr_banzhaf(AIRPORT, MaxSamples(30), seed=3, estimator="regression", paired=True, batch_size=7)
    np.testing.assert_array_equal(a.values, b.values)


class _WalshGame:
    """U(S) = sum_j w_j x_j + even + odd, x_j = 1[j in S]: `even` adds (|S| - n/2)^2 and products of two
    (2 x_j - 1) factors, `odd` products of three over disjoint triples. Every product of two or more factors, and
    any function of |S| symmetric about n/2, has Banzhaf value 0 (for i in T, U(S + i) - U(S) is twice the
    product over T - i, whose mean is 0), so the Banzhaf values are w in closed form."""

    def __init__(self, n, even, odd, seed=0):
        rng = np.random.default_rng(seed)
        self.n, self.fits, self.weights = n, 0, rng.normal(size=n)
        self.even, self.odd = even, odd
        self.pairs = [(j, k, rng.normal()) for j in range(n) for k in range(j + 1, n) if rng.random() < 0.5]
        self.triples = [(t, rng.normal()) for t in np.arange(n - n % 3).reshape(-1, 3)]

    def __call__(self, subset):
        self.fits += 1
        x = np.zeros(self.n)
        x[np.asarray(subset, np.int64)] = 1.0
        signs = 2 * x - 1
        value = self.weights @ x
        value += self.even * ((x.sum() - self.n / 2) ** 2 + sum(a * signs[j] * signs[k] for j, k, a in self.pairs))
        return value + self.odd * sum(a * np.prod(signs[t]) for t, a in self.triples)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("even", [0.0, 3.0])
def test_msr_regression_stderr_matches_the_spread_over_seeds(paired, even):
    """The reported stderr is the spread of the values over independent runs, for unpaired subsets and for pairs
    whether or not U has a part the pairs cancel (when the pairs' mean scores counted as residual, the paired
    variance came out 55x the spread with even=3 and 0.42x with even=0), and the values centre on the closed form."""
    game = _WalshGame(9, even=even, odd=1.0)
    runs = [msr_banzhaf(game, MaxSamples(40 if paired else 80), seed=s, estimator="regression", paired=paired)
            for s in range(300)]
    values = np.array([r.values for r in runs])
    spread = values.var(0, ddof=1)
    reported = np.mean([r.stderr**2 for r in runs], axis=0)
    assert 0.8 < np.mean(reported / spread) < 1.25, reported / spread
    assert np.all(np.abs(values.mean(0) - game.weights) <= 4 * np.sqrt(spread / len(runs)))


def test_paired_regression_needs_more_pairs_than_points():
    """With n / 2 < pairs <= n the pairs' Gram is singular (or leaves no residual): the MSR means are reported
    instead of what `inv` would make of it (errors of 64 on weights in [0, 1] before), and from n + 1 pairs the
    least squares is exact on an additive game."""
    weights = np.linspace(0.0, 1.0, 12)
    for pairs in (8, 11, 12):
        regression = msr_banzhaf(AdditiveGame(weights), MaxSamples(pairs), seed=1, estimator="regression", paired=True)
        means = msr_banzhaf(AdditiveGame(weights), MaxSamples(pairs), seed=1, paired=True)
        np.testing.assert_array_equal(regression.values, means.values)
    exact = msr_banzhaf(AdditiveGame(weights), MaxSamples(13), seed=1, estimator="regression", paired=True)
    np.testing.assert_allclose(exact.values, weights, atol=1e-10)
