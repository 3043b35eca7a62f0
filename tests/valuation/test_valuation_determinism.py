"""Determinism as a contract: the same seed gives bit-identical values for any batch size and any number
of Ray workers, budgets count the utility values asked for (not the fits a cache happened to spare),
MaxEvaluations stops exactly, and unseeded randomised estimators are seeded from the run's seed."""

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

from alloyml.valuation import (
    AirportGame,
    MaxEvaluations,
    MaxSamples,
    Utility,
    beta_shapley,
    data_oob,
    msr_banzhaf,
    tmc_shapley,
)

GAME = AirportGame(np.linspace(0.1, 1.0, 7))


def _tree_utility(n=14):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n + 30, 3))
    y = (x[:, 0] + 0.5 * rng.normal(size=n + 30) > 0).astype(int)
    return Utility(DecisionTreeClassifier(), x[:n], y[:n], x[n:], y[n:])  # random_state=None, as in README


@pytest.mark.parametrize("run", [lambda **kw: msr_banzhaf(GAME, MaxSamples(50), seed=4, **kw),
                                 lambda **kw: tmc_shapley(GAME, MaxSamples(9), seed=4, truncation_rtol=0.1, **kw),
                                 lambda **kw: beta_shapley(GAME, MaxSamples(11), seed=4, **kw)])  # exact size 0
def test_batch_size_does_not_change_the_values(run):
    results = [run(batch_size=b) for b in (1, 3, 8, 64)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.values, results[0].values)
        np.testing.assert_array_equal(other.stderr, results[0].stderr)
        assert other.params["samples"] == results[0].params["samples"]


def test_max_evaluations_stops_exactly_inside_a_batch():
    utility = _tree_utility()
    result = msr_banzhaf(utility, MaxEvaluations(50), seed=0, batch_size=16)  # batches of 16 would give 64
    assert result.utility_evaluations == 50  # 1 full-set check + 49 subsets
    assert result.params["samples"] == 49


def test_evaluations_are_counted_whether_or_not_the_cache_answered():
    warm = _tree_utility()
    first = tmc_shapley(warm, MaxSamples(3), seed=2, truncation_rtol=None)
    again = tmc_shapley(warm, MaxSamples(3), seed=2, truncation_rtol=None)  # every score now cached
    assert again.utility_evaluations == first.utility_evaluations == 3 * 14 + 2  # + U(N) check, U(empty)
    np.testing.assert_array_equal(again.values, first.values)


def test_an_unseeded_tree_gives_the_same_values_for_the_same_seed():
    a = data_oob(_tree_utility(), MaxSamples(24), seed=5)
    b = data_oob(_tree_utility(), MaxSamples(24), seed=5)
    np.testing.assert_array_equal(a.values, b.values)
    c = tmc_shapley(_tree_utility(), MaxSamples(4), seed=5, truncation_rtol=None)
    d = tmc_shapley(_tree_utility(), MaxSamples(4), seed=5, truncation_rtol=None)
    np.testing.assert_array_equal(c.values, d.values)
    assert not np.array_equal(a.values, data_oob(_tree_utility(), MaxSamples(24), seed=6).values)


def test_an_explicit_random_state_is_kept():
    utility = _tree_utility()
    utility.model = DecisionTreeClassifier(random_state=3)
    utility.reseed(123)
    fitted = utility.fit_subset(np.arange(10), random_state=99)
    assert fitted.random_state == 3


@pytest.mark.ray
def test_bit_identical_on_ray_for_any_worker_count_with_a_cached_utility_and_unseeded_tree(ray_session):
    runs = {}
    for n_jobs in (1, 2, 4):
        utility = _tree_utility()  # fresh cache in the driver; workers get their own empty caches
        runs[n_jobs] = (msr_banzhaf(utility, MaxEvaluations(60), seed=3, batch_size=8, n_jobs=n_jobs),
                        tmc_shapley(utility, MaxEvaluations(40), seed=3, truncation_rtol=0.05, n_jobs=n_jobs,
                                    batch_size=1),
                        data_oob(utility, MaxSamples(20), seed=3, batch_size=3, n_jobs=n_jobs),
                        msr_banzhaf(utility, MaxEvaluations(60), seed=3, batch_size=5, n_jobs=n_jobs,
                                    estimator="regression", paired=True),
                        beta_shapley(utility, MaxEvaluations(80), seed=3, batch_size=2, n_jobs=n_jobs))
    for n_jobs in (2, 4):
        for local, remote in zip(runs[1], runs[n_jobs], strict=True):
            np.testing.assert_array_equal(remote.values, local.values)
            np.testing.assert_array_equal(remote.stderr, local.stderr)
            assert remote.utility_evaluations == local.utility_evaluations
    assert runs[1][0].utility_evaluations == 60
