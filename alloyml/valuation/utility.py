"""Utility: the score of a model trained on a subset of the training data.

U(S) = scorer(model fitted on train[S], test). Every Shapley-family method sees data only through a
utility, so closed-form games (`games.py`) and real models are interchangeable: both are callables
`utility(subset) -> float` with an `n` attribute.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np

from alloyml.errors import AlloyError, InvalidInputError
from alloyml.valuation.checks import check_features, check_labels, check_two_classes, model_allows_nan

# A cache entry is a 16-byte digest key, a float and a dict slot: about this many bytes of Python objects.
CACHE_ENTRY_BYTES = 160
# While a run is going, the failure rate is judged against at least this many fits (early failures on
# the small subsets a run starts with are not yet a rate); the method checks the whole run's rate at the end.
FAILURE_RATE_MIN_FITS = 200


class FitFailureError(AlloyError):
    """Fitting or scoring the model failed on the full training set, or on more subsets than tolerated."""


def _num_rows(x, name: str) -> int:
    if not hasattr(x, "shape") and not hasattr(x, "__len__"):
        raise InvalidInputError(f"{name} must be an array-like with rows, got {type(x).__name__}")
    return x.shape[0] if hasattr(x, "shape") else len(x)


def _digest(subset: np.ndarray) -> bytes:
    return hashlib.blake2b(subset.tobytes(), digest_size=16).digest()


def with_random_state(estimator, seed: int | None):
    """`estimator` with every unset (`None`) `random_state` among its (nested) parameters set to `seed`;
    explicitly seeded estimators keep their seed."""
    if seed is None or not hasattr(estimator, "get_params"):
        return estimator
    unset = {key: seed for key, value in estimator.get_params(deep=True).items()
             if (key == "random_state" or key.endswith("__random_state")) and value is None}
    return estimator.set_params(**unset) if unset else estimator


class Utility:
    """Refits `model` on subsets of the training rows and scores it on the test rows.

    model:   an unfitted scikit-learn estimator or Pipeline (cloned for every fit).
    x_train: [n, ...] array or DataFrame; y_train: [n]. x_test, y_test: the same for scoring.
    scorer:  a scikit-learn scorer name ("accuracy", "r2", ...) or a callable(estimator, x, y) -> float.
    default_score: the utility of the empty subset, and of a subset whose fit or scoring fails.
    max_failure_rate: failed fits tolerated, as a fraction of the fits (judged against at least 200 fits
             while running, and over the whole run at its end); past it `FitFailureError` is raised. A
             failure on the full training set always raises. Tolerated failures are counted
             (`fit_failures`, and in each method's result) and warned of.
    cache_bytes: memory for remembered subset scores (keyed by a 16-byte digest of the sorted subset).

    Input is checked before any fit (see `checks.py`): finite features (NaN allowed only for a Pipeline or a
    NaN-tolerant estimator), finite labels, class labels and at least two classes for a classifier.

    Degenerate subsets have defined values instead of warnings: the empty set scores `default_score`;
    a classifier's one-class subset scores like a model that always predicts that class (the best any
    model can do from such data). Warnings raised while fitting on small subsets (convergence, ...) are
    silenced.

    Randomised estimators: when `fit_seed` is set (the sampling methods set it from their seed), every fit
    of subset S gets `random_state` derived from (fit_seed, S) unless the model fixes its own — so a score
    is the same whichever process or cache computed it.
    """

    def __init__(self, model, x_train, y_train, x_test, y_test, scorer="accuracy", default_score: float = 0.0,
                 max_failure_rate: float = 0.05, cache_bytes: int = 64 * 2**20):
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
        if not 0 <= max_failure_rate <= 1:
            raise InvalidInputError(f"max_failure_rate must be in [0, 1], got {max_failure_rate}")
        self.is_classifier = is_classifier(model)
        allow_nan = model_allows_nan(model)
        check_features(x_train, "x_train", allow_nan=allow_nan)
        check_features(x_test, "x_test", allow_nan=allow_nan)
        self.y_train = check_labels(y_train, "y_train", classifier=self.is_classifier)
        self.y_test = check_labels(y_test, "y_test", classifier=self.is_classifier)
        if self.is_classifier:
            check_two_classes(self.y_train, "y_train")
        self.model = model
        self.x_train, self.x_test = x_train, x_test
        self.scorer = scorer
        self._score = check_scoring(model, scoring=scorer) if isinstance(scorer, str) else scorer
        self.default_score = float(default_score)
        self.max_failure_rate = float(max_failure_rate)
        self.cache_bytes = int(cache_bytes)
        self.n = n
        self.fits = 0
        self.fit_failures = 0
        self.fit_seed: int | None = None
        self._cache: dict[bytes, float] = {}

    def reseed(self, fit_seed: int | None) -> None:
        """Derive every later fit's `random_state` from `fit_seed`; scores cached under another seed go."""
        if fit_seed != self.fit_seed:
            self.fit_seed = fit_seed
            self._cache = {}

    def __call__(self, subset) -> float:
        """U(subset); subset: [m] int indices into the training rows (any order, no repeats)."""
        subset = np.sort(np.asarray(subset, dtype=np.int64))
        key = _digest(subset)
        score = self._cache.get(key)
        if score is None:
            score = self._evaluate(subset, key)
            if len(self._cache) < self.cache_bytes // CACHE_ENTRY_BYTES:
                self._cache[key] = score
        return score

    def subset_seed(self, key: bytes) -> int | None:
        if self.fit_seed is None:
            return None
        salt = (self.fit_seed % 2**128).to_bytes(16, "little")
        return int.from_bytes(hashlib.blake2b(key, digest_size=4, key=salt).digest(), "little")

    def fit_subset(self, subset, model=None, random_state: int | None = None):
        """A fresh clone of `model` (default: the utility's) fitted on train[subset] — a constant
        predictor for a classifier's one-class subsets — or None for the empty subset. Repeated indices
        (bootstrap bags) are allowed. `random_state` seeds the clone's unset random states."""
        from sklearn.base import clone
        from sklearn.dummy import DummyClassifier
        from sklearn.utils import _safe_indexing

        if len(subset) == 0:
            return None
        y = self.y_train[subset]
        x = _safe_indexing(self.x_train, subset)
        one_class = self.is_classifier and np.all(y == y[0])
        estimator = DummyClassifier(strategy="most_frequent") if one_class else clone(model or self.model)
        estimator = with_random_state(estimator, random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimator.fit(x, y)

    def score_estimator(self, estimator) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self._score(estimator, self.x_test, self.y_test))

    def _evaluate(self, subset: np.ndarray, key: bytes) -> float:
        if len(subset) == 0:
            return self.default_score
        self.fits += 1
        try:
            return self.score_estimator(self.fit_subset(subset, random_state=self.subset_seed(key)))
        except Exception as err:  # a fit that fails on a tiny subset is a defined value, within tolerance
            self.record_failure(err, full=len(subset) == self.n)
            return self.default_score

    def record_failure(self, err: Exception, *, full: bool = False) -> None:
        """Count one failed fit; raise FitFailureError if it was the full set or past the tolerated rate."""
        self.fit_failures += 1
        what = f"{type(err).__name__}: {str(err)[:300]}"
        if full:
            raise FitFailureError(f"fitting {type(self.model).__name__} on the full training set ({self.n} rows) "
                                  f"failed ({what}); no data value can be computed") from err
        if self.fit_failures > self.max_failure_rate * max(self.fits, FAILURE_RATE_MIN_FITS):
            raise FitFailureError(
                f"{self.fit_failures} of {self.fits} fits of {type(self.model).__name__} failed, more than "
                f"max_failure_rate={self.max_failure_rate:g} allows; last error: {what}") from err

    def check_full_set(self) -> float:
        """U(N), raising FitFailureError if the model cannot be fitted and scored on every training row."""
        return self(np.arange(self.n))

    def __getstate__(self):
        # Ray ships the utility to workers; the cache is local to each process.
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state


def report_failures(utility, failures: int, evaluations: int, method: str) -> None:
    """End of a method run: raise if the run's failed fits exceed the utility's tolerated rate (the run may
    have been spread over processes that each saw only part), else warn once if there were any."""
    if not failures:
        return
    rate = getattr(utility, "max_failure_rate", 1.0)
    if failures > rate * evaluations:
        raise FitFailureError(f"{method}: {failures} of {evaluations} utility evaluations failed to fit, more "
                              f"than max_failure_rate={rate:g} allows")
    warnings.warn(f"{method}: {failures} of {evaluations} utility evaluations failed to fit and scored "
                  "default_score", RuntimeWarning, stacklevel=3)
