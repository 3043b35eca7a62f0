"""Utility: the score of a model trained on a subset of the training data.

U(S) = scorer(model fitted on train[S], test). Every Shapley-family method sees data only through a
utility, so closed-form games (`games.py`) and real models are interchangeable: both are callables
`utility(subset) -> float` with an `n` attribute.
"""

from __future__ import annotations

import warnings

import numpy as np

from alloyml.errors import InvalidInputError


def _num_rows(x, name: str) -> int:
    if not hasattr(x, "shape") and not hasattr(x, "__len__"):
        raise InvalidInputError(f"{name} must be an array-like with rows, got {type(x).__name__}")
    return x.shape[0] if hasattr(x, "shape") else len(x)


class Utility:
    """Refits `model` on subsets of the training rows and scores it on the test rows.

    model:   an unfitted scikit-learn estimator or Pipeline (cloned for every fit).
    x_train: [n, ...] array or DataFrame; y_train: [n]. x_test, y_test: the same for scoring.
    scorer:  a scikit-learn scorer name ("accuracy", "r2", ...) or a callable(estimator, x, y) -> float.
    default_score: the utility of the empty subset, and of any subset whose fit or scoring fails.
    cache_size: at most this many subset scores are remembered (keyed by the sorted subset).

    Degenerate subsets have defined values instead of warnings: the empty set scores `default_score`;
    a classifier's one-class subset scores like a model that always predicts that class (the best any
    model can do from such data). Warnings raised while fitting on small subsets (convergence, ...) are
    silenced; `fit_failures` counts the subsets that fell back to `default_score`.
    """

    def __init__(self, model, x_train, y_train, x_test, y_test, scorer="accuracy", default_score: float = 0.0,
                 cache_size: int = 200_000):
        from sklearn.base import is_classifier
        from sklearn.metrics import check_scoring

        n = _num_rows(x_train, "x_train")
        if _num_rows(y_train, "y_train") != n:
            raise InvalidInputError(f"y_train must have {n} rows like x_train, got {_num_rows(y_train, 'y_train')}")
        if _num_rows(x_test, "x_test") != _num_rows(y_test, "y_test") or _num_rows(x_test, "x_test") == 0:
            raise InvalidInputError("x_test and y_test must have the same, non-zero number of rows")
        if n == 0:
            raise InvalidInputError("x_train must have at least one row")
        if not hasattr(model, "fit"):
            raise InvalidInputError(f"model must be a scikit-learn estimator with fit(), got {type(model).__name__}")
        self.model = model
        self.x_train, self.y_train = x_train, np.asarray(y_train)
        self.x_test, self.y_test = x_test, np.asarray(y_test)
        self.scorer = scorer
        self._score = check_scoring(model, scoring=scorer) if isinstance(scorer, str) else scorer
        self.default_score = float(default_score)
        self.cache_size = cache_size
        self.is_classifier = is_classifier(model)
        self.n = n
        self.fits = 0
        self.fit_failures = 0
        self._cache: dict[bytes, float] = {}

    def __call__(self, subset) -> float:
        """U(subset); subset: [m] int indices into the training rows (any order, no repeats)."""
        subset = np.sort(np.asarray(subset, dtype=np.int64))
        key = subset.tobytes()
        score = self._cache.get(key)
        if score is None:
            score = self._evaluate(subset)
            if len(self._cache) < self.cache_size:
                self._cache[key] = score
        return score

    def fit_subset(self, subset, model=None):
        """A fresh clone of `model` (default: the utility's) fitted on train[subset] — a constant
        predictor for a classifier's one-class subsets — or None for the empty subset. Repeated indices
        (bootstrap bags) are allowed."""
        from sklearn.base import clone
        from sklearn.dummy import DummyClassifier
        from sklearn.utils import _safe_indexing

        if len(subset) == 0:
            return None
        y = self.y_train[subset]
        x = _safe_indexing(self.x_train, subset)
        one_class = self.is_classifier and np.all(y == y[0])
        estimator = DummyClassifier(strategy="most_frequent") if one_class else clone(model or self.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimator.fit(x, y)

    def score_estimator(self, estimator) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self._score(estimator, self.x_test, self.y_test))

    def _evaluate(self, subset: np.ndarray) -> float:
        if len(subset) == 0:
            return self.default_score
        self.fits += 1
        try:
            return self.score_estimator(self.fit_subset(subset))
        except Exception:  # a fit that fails on a tiny subset is a defined value, not a crash
            self.fit_failures += 1
            return self.default_score

    def __getstate__(self):
        # Ray ships the utility to workers; the cache is local to each process.
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state
