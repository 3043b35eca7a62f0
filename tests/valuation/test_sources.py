"""Source-tuple values through joins and forks, against brute-force enumeration of the source game."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pandas as pd
import pytest

from alloyml.errors import InvalidInputError
from alloyml.valuation import AdditiveGame, MaxSamples, knn_shapley, msr_banzhaf, tmc_shapley
from alloyml.valuation.methods import exact_shapley
from alloyml.valuation.sources import (
    KNNUtility,
    SourceUtility,
    aggregate_to_sources,
    exact_source_semivalues,
    fork_provenance,
    merge_with_provenance,
)


def _naive_knn_utility(x, y, xt, yt, k, rows):
    """Plain loops: for each test point the k nearest present rows by (squared distance, index)."""
    total = 0.0
    for q, label in zip(xt, yt, strict=True):
        ranked = sorted(rows, key=lambda r: (float(((x[r] - q) ** 2).sum()), r))[:k]
        total += sum(y[r] == label for r in ranked) / k
    return total / len(xt)


def _brute_force_source_shapley(n_sources, rows_of, value):
    """Shapley by the subset formula over all subsets of the sources; rows_of(T) = induced training rows."""
    cache = {}

    def v(members):
        key = frozenset(members)
        if key not in cache:
            cache[key] = value(rows_of(key))
        return cache[key]

    phi = np.zeros(n_sources)
    for s in range(n_sources):
        others = [j for j in range(n_sources) if j != s]
        for size in range(n_sources):
            weight = factorial(size) * factorial(n_sources - size - 1) / factorial(n_sources)
            for subset in itertools.combinations(others, size):
                phi[s] += weight * (v(set(subset) | {s}) - v(subset))
    return phi


def _join(seed=0):
    """A fact table of 6 rows joined to a side table of 3 rows by key (integer features: ties)."""
    rng = np.random.default_rng(seed)
    fact = pd.DataFrame({"key": [0, 1, 2, 0, 1, 2], "f": rng.integers(0, 3, 6), "label": [0, 1, 1, 0, 1, 0]})
    side = pd.DataFrame({"key": [0, 1, 2], "g": rng.integers(0, 3, 3)})
    frame, provenance = merge_with_provenance(fact, side, on="key", right_name="side")
    x = frame[["f", "g"]].to_numpy(np.float64)
    y = frame["label"].to_numpy()
    xt = np.array([[1.0, 1.0], [0.0, 2.0], [2.0, 0.0]])
    yt = np.array([1, 0, 1])
    return fact, side, frame, provenance, x, y, xt, yt


def test_knn_utility_game_has_the_closed_form_knn_shapley_values():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 3, (9, 2)).astype(float), rng.integers(0, 2, 9)
    xt, yt = rng.integers(0, 3, (4, 2)).astype(float), rng.integers(0, 2, 4)
    game = KNNUtility(x, y, xt, yt, k=3)
    for rows in ([], [0, 4, 7], list(range(9))):
        assert game(rows) == pytest.approx(_naive_knn_utility(x, y, xt, yt, 3, rows), abs=1e-15)
    np.testing.assert_allclose(exact_shapley(game).values, knn_shapley(x, y, xt, yt, k=3).values, atol=1e-12)


def test_provenance_of_a_join_points_at_the_source_rows():
    fact, side, frame, provenance, *_ = _join()
    assert provenance.tables == ("fact", "side") and provenance.n_sources == 9
    np.testing.assert_array_equal(frame["f"], fact["f"].to_numpy()[provenance.rows[:, 0]])
    np.testing.assert_array_equal(frame["g"], side["g"].to_numpy()[provenance.rows[:, 1]])
    np.testing.assert_array_equal(frame["key"], side["key"].to_numpy()[provenance.rows[:, 1]])


def test_exact_knn_shapley_over_join_sources_matches_brute_force():
    _, _, _, provenance, x, y, xt, yt = _join()
    exact = exact_source_semivalues(provenance, KNNUtility(x, y, xt, yt, k=2))
    ids = provenance.source_ids()

    def rows_of(members):
        return [r for r in range(len(ids)) if set(ids[r]) <= set(members)]

    expected = _brute_force_source_shapley(9, rows_of, lambda rows: _naive_knn_utility(x, y, xt, yt, 2, rows))
    np.testing.assert_allclose(exact.values, expected, atol=1e-12)
    assert exact.params["sources"][6] == "side[0]"
    # efficiency of the source game: the values sum to U(all sources) - U(none)
    assert exact.values.sum() == pytest.approx(_naive_knn_utility(x, y, xt, yt, 2, range(len(y))))
    # the row-sum aggregate is not the source game's value for a join under k-NN
    rows_exact = knn_shapley(x, y, xt, yt, k=2).values
    assert not np.allclose(aggregate_to_sources(rows_exact, provenance), exact.values, atol=1e-3)


def test_chained_left_join_keeps_rows_without_a_match():
    fact = pd.DataFrame({"key": [0, 1, 5], "a": [1.0, 2.0, 3.0]})
    side1 = pd.DataFrame({"key": [0, 1], "b": [10.0, 20.0]})
    side2 = pd.DataFrame({"a": [1.0, 3.0], "c": [7.0, 8.0]})
    step = merge_with_provenance(fact, side1, on="key", how="left", right_name="s1")
    frame, provenance = merge_with_provenance(step, side2, on="a", how="left", right_name="s2")
    np.testing.assert_array_equal(provenance.rows, [[0, 0, 0], [1, 1, -1], [2, -1, 1]])
    # a row needs only the tuples it has: without s1's rows, the fact row with key 5 survives
    present = np.ones(provenance.n_sources, dtype=bool)
    present[3:5] = False
    np.testing.assert_array_equal(provenance.induced_rows(present), [2])
    assert len(frame) == 3


def test_fork_aggregate_is_exact_for_an_additive_row_game():
    provenance = fork_provenance(np.array([0, 0, 1, 2, 2, 2]), n_sources=4)  # source 3 feeds nothing
    weights = np.array([0.5, -1.0, 2.0, 0.25, 0.25, 1.5])
    exact = exact_source_semivalues(provenance, AdditiveGame(weights)).values
    np.testing.assert_allclose(exact, [-0.5, 2.0, 2.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(aggregate_to_sources(AdditiveGame(weights).shapley_values(), provenance), exact,
                               atol=1e-12)


def test_sampled_methods_through_a_join_converge_to_the_exact_source_values():
    _, _, _, provenance, x, y, xt, yt = _join(seed=2)
    game = SourceUtility(provenance, KNNUtility(x, y, xt, yt, k=2))
    exact = exact_source_semivalues(provenance, KNNUtility(x, y, xt, yt, k=2)).values
    tmc = tmc_shapley(game, MaxSamples(400), truncation_rtol=None, seed=0)
    assert np.all(np.abs(tmc.values - exact) <= 4 * tmc.stderr + 1e-12)
    assert np.abs(tmc.values - exact).max() < 0.03
    from alloyml.valuation import exact_banzhaf

    banzhaf = exact_banzhaf(SourceUtility(provenance, KNNUtility(x, y, xt, yt, k=2))).values
    msr = msr_banzhaf(SourceUtility(provenance, KNNUtility(x, y, xt, yt, k=2)), MaxSamples(4000), seed=0)
    assert np.all(np.abs(msr.values - banzhaf) <= 4 * msr.stderr + 1e-12)


def test_sampled_shapley_through_a_join_refits_a_real_model():
    from sklearn.linear_model import LogisticRegression

    from alloyml.valuation import Utility

    _, _, _, provenance, x, y, xt, yt = _join(seed=3)
    utility = Utility(LogisticRegression(), x, y, xt, yt)
    result = tmc_shapley(SourceUtility(provenance, utility), MaxSamples(5), truncation_rtol=None, seed=0)
    # every permutation's marginals sum to U(all sources) - U(no sources): efficiency per sample
    assert result.values.sum() == pytest.approx(utility(np.arange(len(y))) - utility(np.zeros(0, np.int64)))
    assert result.utility_evaluations > 0


def test_bad_inputs_are_refused():
    _, _, _, provenance, x, y, xt, yt = _join()
    with pytest.raises(InvalidInputError, match="row_utility has n=3"):
        SourceUtility(provenance, KNNUtility(x[:3], y[:3], xt, yt, k=1))
    with pytest.raises(InvalidInputError, match="source_rows"):
        fork_provenance(np.array([0, -1]))
    with pytest.raises(InvalidInputError, match="how must be"):
        merge_with_provenance(pd.DataFrame({"k": [1]}), pd.DataFrame({"k": [1]}), on="k", how="outer")
    with pytest.raises(InvalidInputError, match="one value per training row"):
        aggregate_to_sources(np.zeros(2), provenance)
    with pytest.raises(InvalidInputError, match="k must be"):
        KNNUtility(x, y, xt, yt, k=100)


# ---------------------------------------------------------------- exact KNN-Shapley of source groups
@pytest.mark.parametrize("case", range(24))
def test_group_counting_equals_enumeration_on_forks_with_ties(case):
    """Forks (one source row feeding several training rows), integer features so distances tie, k from 1 to
    past the group sizes, empty groups, two and three classes: the counting algorithm against enumeration of
    the source game with the independent `_naive_knn_utility`."""
    from alloyml.valuation.sources import knn_source_shapley

    rng = np.random.default_rng(100 + case)
    n_rows, n_sources = int(rng.integers(3, 13)), int(rng.integers(2, 8))
    k = int(rng.integers(1, min(n_rows, 6) + 1))
    x = rng.integers(0, 3, (n_rows, 2)).astype(float)
    y = rng.integers(0, 2 + case % 2, n_rows)
    xt, yt = rng.integers(0, 3, (3, 2)).astype(float), rng.integers(0, 2 + case % 2, 3)
    source_rows = rng.integers(0, n_sources, n_rows)
    provenance = fork_provenance(source_rows, n_sources)
    expected = _brute_force_source_shapley(
        n_sources, lambda members: np.flatnonzero(np.isin(source_rows, list(members))),
        lambda rows: _naive_knn_utility(x, y, xt, yt, k, list(rows)))
    result = knn_source_shapley(provenance, x, y, xt, yt, k=k)
    np.testing.assert_allclose(result.values, expected, atol=1e-12)
    assert result.params["exact"] == "group counting"


def test_group_counting_on_one_to_one_sources_is_knn_shapley_and_scales_past_enumeration():
    from alloyml.valuation.sources import knn_source_shapley

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    xt, yt = rng.normal(size=(8, 3)), rng.integers(0, 3, 8)
    provenance = fork_provenance(np.arange(60))
    np.testing.assert_allclose(knn_source_shapley(provenance, x, y, xt, yt, k=4).values,
                               knn_shapley(x, y, xt, yt, k=4).values, atol=1e-12)
    # 30 sources of two rows each: beyond enumeration; efficiency (the values sum to U(all) - U(empty))
    grouped = fork_provenance(np.repeat(np.arange(30), 2)[rng.permutation(60)])
    values = knn_source_shapley(grouped, x, y, xt, yt, k=4).values
    np.testing.assert_allclose(values.sum(), _naive_knn_utility(x, y, xt, yt, 4, list(range(60))), atol=1e-12)


def test_joins_are_enumerated_when_small_and_refused_when_exact_is_out_of_reach():
    from alloyml.valuation.sources import NotExactError, knn_source_shapley

    rng = np.random.default_rng(3)
    fact = pd.DataFrame({"key": rng.integers(0, 3, 8), "a": rng.normal(size=8)})
    side = pd.DataFrame({"key": np.arange(3), "b": rng.normal(size=3)})
    frame, provenance = merge_with_provenance(fact, side, on="key")
    x, y = frame[["a", "b"]].to_numpy(), rng.integers(0, 2, len(frame))
    xt, yt = rng.normal(size=(4, 2)), rng.integers(0, 2, 4)
    result = knn_source_shapley(provenance, x, y, xt, yt, k=2)
    np.testing.assert_allclose(result.values, exact_source_semivalues(provenance, KNNUtility(x, y, xt, yt, k=2)).values,
                               atol=1e-15)
    assert result.params["exact"] == "enumeration"
    big_fact = pd.DataFrame({"key": rng.integers(0, 5, 30), "a": rng.normal(size=30)})
    big, big_provenance = merge_with_provenance(big_fact, side.assign(key=np.arange(3)).iloc[:3], on="key")
    xb, yb = big[["a", "b"]].to_numpy(), rng.integers(0, 2, len(big))
    with pytest.raises(NotExactError, match="SourceUtility"):
        knn_source_shapley(big_provenance, xb, yb, xt, yt, k=2)
    with pytest.raises(InvalidInputError, match="rows"):
        knn_source_shapley(provenance, x[:-1], y[:-1], xt, yt, k=2)
