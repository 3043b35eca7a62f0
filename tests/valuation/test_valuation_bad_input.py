"""The bad-input catalogue of issue 19: each refused before any fit, with an error naming the input, and
the Utility failure policy (raise on the full set or past the tolerated rate, warn and count below)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.tree import DecisionTreeClassifier

from alloyml.errors import AlloyError, InvalidInputError
from alloyml.valuation import (
    MaxSamples,
    Utility,
    data_oob,
    exact_shapley,
    knn_shapley,
    leave_one_out,
    msr_banzhaf,
    tmc_shapley,
)
from alloyml.valuation.utility import FitFailureError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(int)
    return x[:30], y[:30], x[30:], y[30:]


def _with(array, row, col, value):
    out = array.astype(float).copy()
    out[row, col] = value
    return out


@pytest.mark.parametrize("where,value", [("x_train", np.nan), ("x_train", np.inf), ("x_test", np.inf),
                                         ("x_test", -np.inf)])
def test_knn_shapley_refuses_non_finite_features(data, where, value):
    x, y, xt, yt = data
    args = {"x_train": x, "x_test": xt}
    args[where] = _with(args[where], 2, 1, value)
    with pytest.raises(InvalidInputError, match=where):
        knn_shapley(args["x_train"], y, args["x_test"], yt)


def test_knn_shapley_refuses_bad_labels_k_and_one_class(data):
    x, y, xt, yt = data
    with pytest.raises(InvalidInputError, match="y_train.*continuous"):
        knn_shapley(x, x[:, 1], xt, yt)
    with pytest.raises(InvalidInputError, match="y_test.*non-finite"):
        knn_shapley(x, y, xt, np.r_[np.nan, yt[1:]])
    with pytest.raises(InvalidInputError, match="k=31 exceeds the 30"):
        knn_shapley(x, y, xt, yt, k=31)
    with pytest.raises(InvalidInputError, match="y_train has a single class"):
        knn_shapley(x, np.ones(30, int), xt, yt)


@pytest.mark.parametrize("model", [LogisticRegression(), DecisionTreeClassifier()])
def test_utility_refuses_nan_features_for_models_that_do_not_take_them(data, model):
    x, y, xt, yt = data
    nan_x = _with(x, 4, 0, np.nan)
    tolerant = model.__sklearn_tags__().input_tags.allow_nan
    if tolerant:  # decision trees handle NaN: accepted; infinities never are
        Utility(model, nan_x, y, xt, yt)
        with pytest.raises(InvalidInputError, match="x_train holds 1 infinite"):
            Utility(model, _with(x, 4, 0, np.inf), y, xt, yt)
    else:
        with pytest.raises(InvalidInputError, match="x_train holds 1 non-finite"):
            Utility(model, nan_x, y, xt, yt)
    with pytest.raises(InvalidInputError, match="x_test"):
        Utility(model, x, y, _with(xt, 0, 2, np.inf), yt)


def test_a_pipeline_that_imputes_may_take_nan_and_gives_real_values(data):
    x, y, xt, yt = data
    utility = Utility(make_pipeline(SimpleImputer(), LogisticRegression()), _with(x, 4, 0, np.nan), y, xt, yt)
    result = leave_one_out(utility)
    assert result.fit_failures == 0 and utility.fit_failures == 0


def test_utility_refuses_continuous_labels_for_a_classifier_and_one_class(data):
    x, y, xt, yt = data
    with pytest.raises(InvalidInputError, match="y_train holds continuous"):
        Utility(LogisticRegression(), x, x[:, 0], xt, yt)
    with pytest.raises(InvalidInputError, match="y_train has a single class"):
        Utility(LogisticRegression(), x, np.zeros(30, int), xt, yt)
    with pytest.raises(InvalidInputError, match="y_train has 1 non-finite"):
        Utility(LinearRegression(), x, np.r_[np.inf, x[1:, 0]], xt, xt[:, 0], scorer="r2")
    Utility(LinearRegression(), x, x[:, 0], xt, xt[:, 0], scorer="r2")  # regression labels are fine


def test_data_oob_refuses_nan_features_before_fitting(data):
    x, y, xt, yt = data
    with pytest.raises(InvalidInputError, match="x_train"):
        data_oob(Utility(LogisticRegression(), _with(x, 0, 0, np.nan), y, xt, yt), MaxSamples(4))


# ---------------------------------------------------------------- failure policy
class FragileRegressor(RegressorMixin, BaseEstimator):
    """Predicts the training mean; fails on fewer than `min_rows` rows (a stand-in for any failing fit)."""

    def __init__(self, min_rows=2):
        self.min_rows = min_rows

    def fit(self, x, y):
        if len(y) < self.min_rows:
            raise ValueError(f"need {self.min_rows} rows, got {len(y)}")
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, x):
        return np.full(len(x), self.mean_)


def _regression(n=12):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n + 10, 2))
    return x[:n], x[:n, 0], x[n:], x[n:, 0]


def test_a_failing_full_set_raises_before_any_value():
    x, y, xt, yt = _regression()
    for run in (lambda u: tmc_shapley(u, MaxSamples(2), seed=0), lambda u: msr_banzhaf(u, MaxSamples(8), seed=0),
                leave_one_out, exact_shapley, lambda u: data_oob(u, MaxSamples(4), seed=0)):
        utility = Utility(FragileRegressor(min_rows=100), x, y, xt, yt, scorer="neg_mean_squared_error")
        with pytest.raises(FitFailureError, match="full training set"):
            run(utility)
        assert isinstance(FitFailureError("x"), AlloyError)


def test_a_column_transformer_naming_a_missing_column_raises():
    frame = pd.DataFrame({"a": np.arange(20.0), "b": np.arange(20.0) % 3})
    y = (frame.a > 9).astype(int).to_numpy()
    pipe = make_pipeline(ColumnTransformer([("num", "passthrough", ["a", "missing"])]), LogisticRegression())
    utility = Utility(pipe, frame, y, frame, y)
    with pytest.raises(FitFailureError, match="full training set"):
        tmc_shapley(utility, MaxSamples(3), seed=0)


def test_failures_below_the_rate_are_counted_and_warned_of_above_it_raise():
    x, y, xt, yt = _regression(12)
    # only the 12 singletons fail: 12 of 4095 enumerated fits (0.3% < 5%)
    utility = Utility(FragileRegressor(min_rows=2), x, y, xt, yt, scorer="neg_mean_squared_error")
    with pytest.warns(RuntimeWarning, match="12 of 4096 utility evaluations failed"):
        result = exact_shapley(utility)
    assert result.fit_failures == 12 and utility.fit_failures == 12
    assert result.to_dict()["fit_failures"] == 12
    # sizes 1..3 fail: 12 + 66 + 220 = 298 of 4095 (7.3%) - past the default 5%
    with pytest.raises(FitFailureError, match="max_failure_rate=0.05"):
        exact_shapley(Utility(FragileRegressor(min_rows=4), x, y, xt, yt, scorer="neg_mean_squared_error"))
    # a looser tolerance lets it through, every failure counted
    loose = Utility(FragileRegressor(min_rows=4), x, y, xt, yt, scorer="neg_mean_squared_error",
                    max_failure_rate=0.5)  # enumeration meets the small subsets first
    with pytest.warns(RuntimeWarning):
        assert exact_shapley(loose).fit_failures == 298
