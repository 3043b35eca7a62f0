"""Input checks shared by every valuation method, run before any model is fitted.

Values computed from garbage are worse than an error: one NaN feature makes every KNN-Shapley distance NaN
(so every value equal), continuous labels turn a classifier utility into noise, a one-class training set
makes every value the same. So each method refuses such input up front with an error naming it.

Policy for missing values: infinite numbers are always refused. NaN in the features is refused unless the
model says it handles them — a scikit-learn `Pipeline` (whose steps may impute) or an estimator whose tags
allow NaN (e.g. HistGradientBoosting); if such a model still cannot fit the full training set, the
`Utility` failure policy raises. Labels must always be finite.
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError


def _numeric_values(x) -> np.ndarray | None:
    """The numeric part of `x` as a float array (DataFrame: its numeric columns; sparse: stored entries),
    or None when nothing in it is numeric."""
    if hasattr(x, "select_dtypes"):  # pandas DataFrame: strings/categories are the pipeline's business
        numeric = x.select_dtypes(include="number")
        return numeric.to_numpy(dtype=np.float64) if numeric.shape[1] else None
    if hasattr(x, "tocsr"):  # scipy sparse
        return np.asarray(x.data)
    array = np.asarray(x)
    if array.dtype.kind in "fc":
        return array
    if array.dtype.kind == "O":
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError):  # mixed objects: left to the model's own checks
            return None
    return None  # integers and booleans are always finite


def check_features(x, name: str, *, allow_nan: bool = False) -> None:
    """Raise InvalidInputError if the numeric entries of `x` hold inf (or NaN unless `allow_nan`)."""
    values = _numeric_values(x)
    if values is None or values.size == 0:
        return
    bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
    if bad.any():
        position = np.unravel_index(int(np.argmax(bad)), values.shape)
        what = "infinite" if allow_nan else "non-finite (NaN or inf)"
        raise InvalidInputError(
            f"{name} holds {int(bad.sum())} {what} values (first at position {tuple(int(p) for p in position)}); "
            "valuation needs finite features: impute or drop them first"
            + ("" if allow_nan else ", or use a Pipeline that imputes")
        )


def check_labels(y, name: str, *, classifier: bool) -> np.ndarray:
    """y as an array; refuses non-finite labels and, for a classifier, continuous (non-integer float) labels."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise InvalidInputError(f"{name} must be 1-D (one label per row), got shape {y.shape}")
    if y.dtype.kind == "O":
        missing = [i for i, v in enumerate(y) if v is None or (isinstance(v, float) and v != v)]
        if missing:
            raise InvalidInputError(f"{name} has {len(missing)} missing labels (first at row {missing[0]})")
    if y.dtype.kind in "fc":
        if not np.all(np.isfinite(y)):
            raise InvalidInputError(f"{name} has {int((~np.isfinite(y)).sum())} non-finite labels "
                                    f"(first at row {int(np.argmax(~np.isfinite(y)))})")
        if classifier and np.any(y != np.round(y)):
            raise InvalidInputError(
                f"{name} holds continuous values (e.g. {y[np.argmax(y != np.round(y))]!r}) but the model is a "
                "classifier; pass class labels, or a regressor with a regression scorer such as 'r2'"
            )
    return y


def check_two_classes(y: np.ndarray, name: str) -> None:
    """A classifier's training labels need two classes: with one, every row would get the same value."""
    if np.unique(y).size < 2:
        raise InvalidInputError(f"{name} has a single class ({y[0]!r}); every row would get the same value — "
                                "data valuation needs at least two classes")


def model_allows_nan(model) -> bool:
    """True for a Pipeline (its steps may impute) or an estimator whose tags allow NaN inputs."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        return True
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(model).input_tags.allow_nan)
    except Exception:  # noqa: BLE001 - estimators outside scikit-learn may not implement tags
        return False
