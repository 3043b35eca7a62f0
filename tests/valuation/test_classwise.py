"""Class-wise Shapley against a brute-force reading of Schoch et al.'s definition (all out-of-class
contexts x all in-class permutations, every fit done here with scikit-learn directly)."""

import functools
import itertools
import math

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from alloyml.errors import InvalidInputError
from alloyml.valuation import Utility, classwise_shapley, exact_classwise_shapley


def _data():
    rng = np.random.default_rng(3)
    x_train = rng.normal(size=(6, 2))
    y_train = np.array([0, 1, 0, 1, 1, 0])
    x_train[y_train == 1] += 1.0
    x_train[4] = x_train[0] + 0.05  # a class-1 point among class 0
    x_test = rng.normal(size=(10, 2))
    y_test = np.array([0, 1] * 5)
    x_test[y_test == 1] += 1.0
    return x_train, y_train, x_test, y_test


def _oracle(x_train, y_train, x_test, y_test):
    @functools.cache
    def correct(rows):
        model = KNeighborsClassifier(n_neighbors=1).fit(x_train[list(rows)], y_train[list(rows)])
        return model.predict(x_test) == y_test

    def u(rows, label):
        if not rows:
            return 0.0
        hit = correct(tuple(sorted(rows)))
        return hit[y_test == label].sum() / len(y_test) * math.exp(hit[y_test != label].sum() / len(y_test))

    values = np.zeros(len(y_train))
    for label in np.unique(y_train):
        inside = [int(i) for i in np.flatnonzero(y_train == label)]
        outside = [int(i) for i in np.flatnonzero(y_train != label)]
        contexts = [c for r in range(len(outside) + 1) for c in itertools.combinations(outside, r)]
        orders = list(itertools.permutations(inside))
        for context in contexts:
            for order in orders:
                for k, i in enumerate(order):
                    before = list(context) + list(order[:k])
                    values[i] += (u(before + [i], label) - u(before, label)) / (len(contexts) * len(orders))
    return values


def _utility():
    return Utility(KNeighborsClassifier(n_neighbors=1), *_data())


def test_exact_matches_brute_force_definition():
    expected = _oracle(*_data())
    result = exact_classwise_shapley(_utility())
    np.testing.assert_allclose(result.values, expected, atol=1e-12)


def test_sampled_converges_to_exact_and_is_seeded():
    exact = exact_classwise_shapley(_utility()).values
    result = classwise_shapley(_utility(), 400, seed=0)
    # within 4 standard errors of the exact value (and the error bars are not vacuous)
    assert np.all(np.abs(result.values - exact) <= 4 * result.stderr + 1e-12)
    assert np.max(result.stderr) < 0.05
    assert np.max(np.abs(result.values - exact)) < 0.05
    again = classwise_shapley(_utility(), 400, seed=0, progress=True)
    np.testing.assert_array_equal(again.values, result.values)


def test_bad_input():
    from sklearn.linear_model import LinearRegression

    x_train, _, x_test, _ = _data()
    regression = Utility(LinearRegression(), x_train, np.arange(6.0), x_test, np.arange(10.0), scorer="r2")
    with pytest.raises(InvalidInputError, match="classifier"):
        classwise_shapley(regression, 10)
    with pytest.raises(InvalidInputError, match="n_samples"):
        classwise_shapley(_utility(), 1)


def test_unseeded_tree_same_seed_same_values_and_cache_follows_the_seed():
    from sklearn.tree import DecisionTreeClassifier

    from alloyml.valuation import ClasswiseUtility

    data = _data()
    game = ClasswiseUtility(Utility(DecisionTreeClassifier(max_features=1), *data))
    first = classwise_shapley(game, 20, seed=1).values
    second = classwise_shapley(game, 20, seed=2).values  # must not reuse the first seed's fits
    fresh = [classwise_shapley(ClasswiseUtility(Utility(DecisionTreeClassifier(max_features=1), *data)), 20,
                               seed=s).values for s in (1, 2)]
    np.testing.assert_array_equal(first, fresh[0])
    np.testing.assert_array_equal(second, fresh[1])


def test_a_model_that_cannot_fit_all_rows_raises_before_sampling():
    from sklearn.base import BaseEstimator, ClassifierMixin

    from alloyml.valuation.utility import FitFailureError

    class Broken(ClassifierMixin, BaseEstimator):
        def fit(self, x, y):
            raise ValueError("cannot fit")

    utility = Utility(Broken(), *_data())
    with pytest.raises(FitFailureError, match="full training set"):
        classwise_shapley(utility, 10, seed=0)
    assert utility.fits == 1
