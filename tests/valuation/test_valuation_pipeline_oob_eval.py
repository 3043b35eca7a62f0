"""Pipeline-aware values, Data-OOB, evaluation helpers, and seed-determinism on Ray."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.dummy import DummyClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from alloyml.errors import InvalidInputError
from alloyml.valuation import (
    AirportGame,
    MaxSamples,
    Utility,
    ValuationResult,
    data_oob,
    exact_shapley,
    flip_labels,
    knn_shapley,
    msr_banzhaf,
    noisy_label_detection,
    pipeline_knn_shapley,
    pipeline_utility,
    point_removal_curve,
    tmc_shapley,
)


class BatchCentering(BaseEstimator, TransformerMixin):
    """Not row-wise: subtracts the mean of whatever batch it transforms."""

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return np.asarray(x, dtype=float) - np.asarray(x, dtype=float).mean(0)


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"a": rng.normal(size=n) * 5 + 3, "b": rng.normal(size=n),
                       "color": rng.choice(["red", "green", "blue"], n)})
    y = ((df.a - 3) / 5 + df.b + (df.color == "red") > 0.5).astype(int).to_numpy()
    return df.iloc[:90], y[:90], df.iloc[90:], y[90:]


def _column_pipeline(final=None):
    # strings inside; unknown categories ignored so a 5-row training set still scores the test rows
    categorical = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
    pre = ColumnTransformer([("num", StandardScaler(), ["a", "b"]), ("cat", categorical, ["color"])])
    return make_pipeline(pre, final or KNeighborsClassifier(5))


def test_pipeline_knn_shapley_equals_knn_shapley_on_the_transformed_rows(frame):
    x, y, xt, yt = frame
    pipe = _column_pipeline().fit(x, y)
    scaled = StandardScaler().fit(x[["a", "b"]])
    onehot = OneHotEncoder().fit(x[["color"]])
    by_hand = lambda d: np.hstack([scaled.transform(d[["a", "b"]]), onehot.transform(d[["color"]]).toarray()])
    expected = knn_shapley(by_hand(x), y, by_hand(xt), yt, k=5).values
    result = pipeline_knn_shapley(pipe, x, y, xt, yt, k=5)
    np.testing.assert_allclose(result.values, expected, atol=1e-12)
    assert result.method == "pipeline_knn_shapley" and len(result) == len(x)


def test_non_rowwise_step_is_refused_by_name(frame):
    x, y, xt, yt = frame
    pipe = make_pipeline(StandardScaler(), BatchCentering(), KNeighborsClassifier()).fit(x[["a", "b"]], y)
    with pytest.raises(InvalidInputError, match="batchcentering.*not row-wise"):
        pipeline_knn_shapley(pipe, x[["a", "b"]], y, xt[["a", "b"]], yt)
    with pytest.raises(InvalidInputError, match="fitted"):
        pipeline_knn_shapley(_column_pipeline(), x, y, xt, yt)


def test_sampling_on_the_whole_pipeline_values_source_rows(frame):
    x, y, xt, yt = frame
    utility = pipeline_utility(_column_pipeline(LogisticRegression()), x.iloc[:5], y[:5], xt, yt)
    exact = exact_shapley(utility)
    by_hand = Utility(_column_pipeline(LogisticRegression()), x.iloc[:5], y[:5], xt, yt)
    full = by_hand(np.arange(5))
    assert exact.values.sum() == pytest.approx(full - by_hand([]))
    assert utility.fit_failures == 0 and np.ptp(exact.values) > 0  # real fits, not default scores
    sampled = tmc_shapley(utility, MaxSamples(60), truncation_rtol=None, seed=0)
    assert np.all(np.abs(sampled.values - exact.values) <= 4 * sampled.stderr + 1e-12)


def test_data_oob_of_a_constant_model_is_agreement_with_the_majority():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    y = np.r_[np.zeros(25, int), np.ones(5, int)]  # every bootstrap bag of 30 has a 0-majority w.h.p.
    utility = Utility(LogisticRegression(), x, y, x, y)
    result = data_oob(utility, MaxSamples(64), model=DummyClassifier(strategy="most_frequent"), seed=0)
    np.testing.assert_allclose(result.values, (y == 0).astype(float))
    assert result.counts.min() > 10 and result.utility_evaluations == 64


def test_data_oob_finds_flipped_labels_on_breast_cancer():
    x, y = load_breast_cancer(return_X_y=True)
    noisy, flipped = flip_labels(y[:300], 0.1, seed=0)
    utility = Utility(DecisionTreeClassifier(max_depth=4), x[:300], noisy, x[300:], y[300:])
    scores = noisy_label_detection(data_oob(utility, MaxSamples(64), seed=0), flipped)
    assert scores.auc > 0.9 and scores.f1 > 0.5


def test_flip_labels_flips_exactly_the_fraction_to_other_classes():
    y = np.repeat(np.array(["a", "b", "c"]), 20)
    noisy, flipped = flip_labels(y, 0.25, seed=1)
    assert flipped.size == 15 and np.all(noisy[flipped] != y[flipped])
    assert np.array_equal(np.delete(noisy, flipped), np.delete(y, flipped))


def test_noisy_label_detection_scores_by_hand():
    # values rank points 3 < 0 < 4 < 1 < 2; noisy = {0, 1}; flag 2 lowest = {3, 0}: one hit
    result = ValuationResult(np.array([0.1, 0.5, 0.9, -0.2, 0.3]), np.zeros(5), np.ones(5), "x")
    scores = noisy_label_detection(result, [0, 1])
    assert (scores.precision, scores.recall, scores.f1) == (0.5, 0.5, 0.5)
    # AUC: pairs (noisy, clean) where noisy has the lower value: 0 beats 2, 4 (not 3); 1 beats 2 -> 3/6
    assert scores.auc == pytest.approx(3 / 6)


def test_point_removal_curve_refits_without_the_removed_rows():
    game = AirportGame(np.array([0.1, 0.4, 0.2, 0.8]))
    result = ValuationResult(np.array([4.0, 3.0, 2.0, 1.0]), np.zeros(4), np.ones(4), "x")
    fractions, scores = point_removal_curve(result, game, fractions=(0.0, 0.5, 0.75), highest_first=True)
    assert scores.tolist() == [-0.8, -0.8, -0.8]  # point 3 (cost 0.8) is removed last
    _, low_first = point_removal_curve(result, game, fractions=(0.0, 0.25, 0.5), highest_first=False)
    assert low_first.tolist() == [-0.8, -0.4, -0.4]


@pytest.mark.ray
def test_same_seed_same_values_on_ray_for_any_worker_count(ray_session):
    game = AirportGame(np.linspace(0.1, 1.0, 7))
    local = msr_banzhaf(game, MaxSamples(96), seed=11, batch_size=8)
    on_ray = msr_banzhaf(game, MaxSamples(96), seed=11, batch_size=8, n_jobs=3)
    np.testing.assert_array_equal(on_ray.values, local.values)
    np.testing.assert_array_equal(on_ray.stderr, local.stderr)
    assert on_ray.params["samples"] == 96


@pytest.mark.ray
@pytest.mark.slow
def test_a_real_utility_gives_the_same_values_on_ray(ray_session):
    """The utility travels to the workers (each with its own cache); workers import sklearn, hence slow."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    utility = lambda: Utility(DecisionTreeClassifier(max_depth=2), x[:20], y[:20], x[20:], y[20:])
    local = data_oob(utility(), MaxSamples(32), seed=1, batch_size=4)
    on_ray = data_oob(utility(), MaxSamples(32), seed=1, batch_size=4, n_jobs=2)
    np.testing.assert_array_equal(on_ray.values, local.values)
