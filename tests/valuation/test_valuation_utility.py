"""Utility (degenerate subsets, cache), enumeration on a tiny real utility, LOO, stopping, result."""

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from alloyml.errors import InvalidInputError
from alloyml.valuation import (
    AirportGame,
    MaxSamples,
    MinUpdates,
    RankStability,
    StandardErrorThreshold,
    Utility,
    ValuationResult,
    exact_shapley,
    leave_one_out,
    msr_banzhaf,
    tmc_shapley,
)


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(int)
    return x[:6], y[:6], x[6:], y[6:]


def _utility(tiny, **kwargs):
    return Utility(LogisticRegression(), *tiny, **kwargs)


def test_degenerate_subsets_have_defined_scores_without_warnings(tiny):
    x_train, y_train, x_test, y_test = tiny
    utility = _utility(tiny, default_score=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert utility([]) == 0.25
        only = np.flatnonzero(y_train == 1)[:2]
        assert utility(only) == pytest.approx(np.mean(y_test == 1))  # always predicting class 1


def test_cache_reuses_scores_and_matches_a_direct_fit(tiny):
    x_train, y_train, x_test, y_test = tiny
    utility = _utility(tiny)
    first = utility([3, 0, 1, 5])
    assert utility([0, 1, 3, 5]) == first and utility.fits == 1
    direct = LogisticRegression().fit(x_train[[0, 1, 3, 5]], y_train[[0, 1, 3, 5]]).score(x_test, y_test)
    assert first == pytest.approx(direct)


def test_utility_rejects_mismatched_data(tiny):
    x_train, y_train, x_test, y_test = tiny
    with pytest.raises(InvalidInputError, match="y_train"):
        Utility(LogisticRegression(), x_train, y_train[:3], x_test, y_test)
    with pytest.raises(InvalidInputError, match="model"):
        Utility("not a model", x_train, y_train, x_test, y_test)


def _reference_shapley(utility):
    """Average marginal over all n! permutations, with fresh fits (independent of the enumeration)."""
    n = utility.n
    totals = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        previous = utility(list(perm[:0]))
        for j, point in enumerate(perm):
            current = utility(list(perm[: j + 1]))
            totals[point] += current - previous
            previous = current
    return totals / math.factorial(n)


@pytest.fixture(scope="module")
def shared_utility(tiny):
    """One utility (and so one cache of subset scores) for the tests that compare algorithms on it."""
    return _utility(tiny)


def test_exact_shapley_on_a_real_utility_matches_permutation_average(shared_utility):
    exact = exact_shapley(shared_utility).values
    np.testing.assert_allclose(exact, _reference_shapley(shared_utility), atol=1e-12)
    # efficiency: values sum to U(N) - U(empty)
    assert exact.sum() == pytest.approx(shared_utility(range(6)) - shared_utility([]))


def test_sampled_shapley_on_a_real_utility_within_stderr(shared_utility):
    exact = exact_shapley(shared_utility).values
    result = tmc_shapley(shared_utility, MaxSamples(400), truncation_rtol=None, seed=0)
    assert np.all(np.abs(result.values - exact) <= 4 * result.stderr + 1e-12)


def test_leave_one_out_matches_direct_refits(tiny):
    x_train, y_train, x_test, y_test = tiny
    result = leave_one_out(_utility(tiny))
    full = LogisticRegression().fit(x_train, y_train).score(x_test, y_test)
    for i in range(6):
        keep = np.delete(np.arange(6), i)
        without = LogisticRegression().fit(x_train[keep], y_train[keep]).score(x_test, y_test)
        assert result.values[i] == pytest.approx(full - without)


def test_stopping_criteria_and_their_combinations():
    game = AirportGame(np.linspace(0.1, 1, 6))
    assert msr_banzhaf(game, MaxSamples(96), seed=0).params["samples"] == 96
    either = msr_banzhaf(game, MaxSamples(64) | MaxSamples(10_000), seed=0)
    assert either.params["samples"] == 64
    both = msr_banzhaf(game, MaxSamples(64) & MinUpdates(100), seed=0)
    assert both.counts.min() >= 100 and both.params["samples"] >= 64
    precise = msr_banzhaf(game, StandardErrorThreshold(0.02), seed=0)
    assert precise.stderr.max() <= 0.02
    # rank stability stops before the cap and still ranks the airport costs correctly
    stable = tmc_shapley(game, RankStability(0.99, patience=3) | MaxSamples(2000), truncation_rtol=None, seed=0)
    assert stable.params["samples"] < 2000
    assert np.array_equal(stable.ranks(), np.arange(6)[::-1])


def test_result_helpers_and_json_round_trip():
    result = ValuationResult(np.array([0.3, -1.0, 2.0, 0.1]), np.zeros(4), np.ones(4), "x", {"k": 5},
                             indices=np.array([10, 11, 12, 13]))
    assert result.lowest(2).tolist() == [11, 13] and result.highest(1).tolist() == [12]
    assert result.ranks().tolist() == [2, 0, 3, 1]
    again = ValuationResult.from_dict(json.loads(json.dumps(result.to_dict())))
    np.testing.assert_array_equal(again.values, result.values)
    assert again.indices.tolist() == [10, 11, 12, 13] and again.params == {"k": 5}
    with pytest.raises(InvalidInputError, match="stderr"):
        ValuationResult(np.zeros(3), np.zeros(2), np.zeros(3), "x")


def test_rank_stability_refuses_a_correlation_it_can_never_reach():
    from alloyml.errors import ConfigError

    for bad in (2.0, 1.0, -1.5):
        with pytest.raises(ConfigError, match="min_correlation"):
            RankStability(bad)


def test_the_cache_is_bounded_by_memory_with_fixed_size_keys(tiny):
    from alloyml.valuation.utility import CACHE_ENTRY_BYTES

    utility = _utility(tiny, cache_bytes=3 * CACHE_ENTRY_BYTES)
    subsets = [[0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]
    for subset in subsets:
        utility(subset)
    assert len(utility._cache) == 3 and utility.fits == 5
    utility([0, 5])  # not remembered: fitted again
    utility([0, 1])  # remembered
    assert utility.fits == 6
    assert {len(key) for key in utility._cache} == {16}  # a digest, whatever the subset size
