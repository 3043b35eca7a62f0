"""KNN-Shapley against brute-force Shapley of the KNN utility and against a naive recursion."""

import numpy as np
import pytest

from alloyml.errors import InvalidInputError
from alloyml.valuation import exact_shapley, knn_shapley


class KNNUtility:
    """U(S) = mean over test points of (1/K) * #{K nearest in S with the test label} (Jia et al. 2019)."""

    def __init__(self, x, y, x_test, y_test, k):
        self.x, self.y, self.x_test, self.y_test, self.k = x, y, x_test, y_test, k
        self.n, self.fits = len(y), 0

    def __call__(self, subset):
        subset = np.asarray(subset, dtype=int)
        if subset.size == 0:
            return 0.0
        total = 0.0
        for point, label in zip(self.x_test, self.y_test, strict=True):
            distances = np.linalg.norm(self.x[subset] - point, axis=1)
            nearest = subset[np.lexsort((subset, distances))[: self.k]]
            total += np.sum(self.y[nearest] == label) / self.k
        return total / len(self.y_test)


def _naive_recursion(x, y, x_test, y_test, k):
    """Theorem 1 of Jia et al. written as a plain loop (float64, stable argsort)."""
    n = len(y)
    values = np.zeros(n)
    for point, label in zip(x_test, y_test, strict=True):
        order = np.argsort(np.linalg.norm(x - point, axis=1), kind="stable")
        s = np.zeros(n)
        s[order[-1]] = float(y[order[-1]] == label) / n
        for i in range(n - 2, -1, -1):
            rank = i + 1
            s[order[i]] = s[order[i + 1]] + (
                float(y[order[i]] == label) - float(y[order[i + 1]] == label)
            ) / k * min(k, rank) / rank
        values += s
    return values / len(y_test)


@pytest.mark.parametrize("n,k,classes", [(10, 1, 2), (9, 3, 2), (10, 5, 3), (7, 7, 2)])
def test_matches_brute_force_shapley_of_the_knn_utility(n, k, classes):
    rng = np.random.default_rng(n * 100 + k)
    x, x_test = rng.normal(size=(n, 3)), rng.normal(size=(4, 3))
    y, y_test = rng.integers(0, classes, n), rng.integers(0, classes, 4)
    exact = exact_shapley(KNNUtility(x, y, x_test, y_test, k)).values
    np.testing.assert_allclose(knn_shapley(x, y, x_test, y_test, k=k).values, exact, atol=1e-12)


def test_matches_naive_recursion_on_larger_data_for_any_blocking():
    rng = np.random.default_rng(1)
    x, x_test = rng.normal(size=(500, 4)) + 10.0, rng.normal(size=(37, 4)) + 10.0
    y = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 500)]
    y_test = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 37)]
    reference = _naive_recursion(x, y, x_test, y_test, 5)
    default = knn_shapley(x, y, x_test, y_test, k=5)
    np.testing.assert_allclose(default.values, reference, atol=1e-12)
    blocked = knn_shapley(x, y, x_test, y_test, k=5, block_size=4, n_threads=2)
    np.testing.assert_allclose(blocked.values, reference, atol=1e-12)
    assert default.counts.tolist() == [37] * 500 and default.params["k"] == 5


def test_rejects_bad_inputs():
    x = np.zeros((5, 2))
    with pytest.raises(InvalidInputError, match="same d"):
        knn_shapley(x, np.zeros(5), np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(InvalidInputError, match="y_train"):
        knn_shapley(x, np.zeros(4), np.zeros((3, 2)), np.zeros(3))
    with pytest.raises(InvalidInputError, match="k must"):
        knn_shapley(x, np.zeros(5), np.zeros((3, 2)), np.zeros(3), k=0)


def test_exact_under_ties_on_integer_features_against_enumeration():
    """Integer features in {0, 1, 2}: most distances tie. Float32 products made 147 of 400 such cases differ
    from enumeration; every case must match (ties broken by training index, like KNNUtility)."""
    rng = np.random.default_rng(5)
    for case in range(120):
        n, k = int(rng.integers(4, 10)), int(rng.integers(1, 4))
        x, x_test = rng.integers(0, 3, size=(n, 2)), rng.integers(0, 3, size=(3, 2))
        y, y_test = rng.integers(0, 2, n), rng.integers(0, 2, 3)
        if np.unique(y).size < 2:
            continue
        exact = exact_shapley(KNNUtility(x, y, x_test, y_test, k)).values
        np.testing.assert_allclose(knn_shapley(x, y, x_test, y_test, k=k).values, exact, atol=1e-12,
                                   err_msg=f"case {case}")


def test_exact_under_duplicate_rows_far_from_the_origin():
    """Duplicated rows with a large offset (where ||a||^2 - 2ab + ||b||^2 cancels badly): the naive
    recursion on direct differences, ties by index, is matched on every value."""
    rng = np.random.default_rng(7)
    base = rng.integers(0, 4, size=(300, 3)).astype(float) * 0.5 + 1e4
    x = np.repeat(base, 3, axis=0)[rng.permutation(900)]
    x_test = base[rng.integers(0, 300, 25)] + rng.integers(0, 2, size=(25, 3))
    y, y_test = rng.integers(0, 3, 900), rng.integers(0, 3, 25)
    reference = _naive_recursion(x, y, x_test, y_test, 5)
    np.testing.assert_allclose(knn_shapley(x, y, x_test, y_test, k=5).values, reference, atol=1e-12)
    np.testing.assert_allclose(knn_shapley(x, y, x_test, y_test, k=5, block_size=3, n_threads=2).values,
                               reference, atol=1e-12)
