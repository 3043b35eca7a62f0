"""What the routing estimators share with scikit-learn: `BaseEstimator` (so `clone`, `get_params` and
`repr` work) and a fitted check whose error is both an `AlloyError` and sklearn's `NotFittedError`."""

from __future__ import annotations

from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from alloyml.errors import InvalidInputError

__all__ = ["BaseEstimator", "NotFittedError", "require_fitted"]


class NotFittedError(InvalidInputError, SklearnNotFittedError):
    """predict/evaluate was called before fit."""


def require_fitted(estimator, attributes: str | list[str]) -> None:
    """Raise `NotFittedError` naming the estimator unless `fit` has set `attributes`."""
    try:
        check_is_fitted(estimator, attributes)
    except SklearnNotFittedError as err:
        raise NotFittedError(f"{type(estimator).__name__} is not fitted yet; call fit first") from err
