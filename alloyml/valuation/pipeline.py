"""Pipeline-aware values (the DataScope idea, Karlaš et al.): values of the *source* rows that enter a
scikit-learn Pipeline / ColumnTransformer, not of the feature matrix the final model sees.

Supported: preprocessing whose `transform` is row-wise — each output row depends only on its own input
row and on fitted state (scalers, encoders, imputers, PCA, column selection, FunctionTransformer of a
row-wise function, ...), so source row i maps to feature row i. Refused, with an error naming the step:
steps that resample (`fit_resample`), change the number of rows, or mix rows at transform time — found
by probing every step on a reordered half of the data.

Two ways to value source rows:
- `pipeline_knn_shapley`: exact KNN-Shapley in the transformed space of a fitted pipeline (the
  preprocessing is held at its fit on all rows, as DataScope does) — seconds for 10^5 rows.
- `pipeline_utility`: a Utility that refits the whole pipeline on every subset, for the sampling
  methods (tmc_shapley, msr_banzhaf, beta_shapley, ...) and data_oob.
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.knn import knn_shapley
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.utility import Utility

PROBE_ROWS = 200


def _dense(x, dtype=np.float64) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=dtype)


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """Numeric outputs up to rounding; others (strings from an imputer inside a ColumnTransformer) exactly."""
    if a.dtype.kind in "biufc" and b.dtype.kind in "biufc":
        return np.allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=True)
    return np.array_equal(a.astype(str), b.astype(str))


def _probe(step, x, path: str):
    """Raise unless `step.transform` maps rows one-to-one, independently of the other rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.utils import _safe_indexing

    if hasattr(step, "fit_resample"):
        raise InvalidInputError(f"pipeline step {path!r} ({type(step).__name__}) resamples rows; "
                                "only row-wise transforms are supported")
    if isinstance(step, Pipeline):
        for name, sub in step.steps:
            if sub in (None, "passthrough"):
                continue
            _probe(sub, x, f"{path}/{name}")
            x = sub.transform(x)
        return
    if isinstance(step, ColumnTransformer) and not any(callable(c) for _, _, c in step.transformers_):
        for name, sub, columns in step.transformers_:
            if sub not in ("drop", "passthrough"):
                _probe(sub, _safe_indexing(x, columns, axis=1), f"{path}/{name}")
        return
    if not hasattr(step, "transform"):
        raise InvalidInputError(f"pipeline step {path!r} ({type(step).__name__}) has no transform()")
    n = x.shape[0]
    half = np.arange(n)[::-2]  # every other row, reversed: a different batch in a different order
    whole = _dense(step.transform(x), dtype=None)
    part = _dense(step.transform(_safe_indexing(x, half)), dtype=None)
    if whole.shape[0] != n or part.shape[0] != half.size:
        raise InvalidInputError(f"pipeline step {path!r} ({type(step).__name__}) changes the number of rows; "
                                "only row-wise transforms are supported")
    if not _same_rows(whole[half], part):
        raise InvalidInputError(f"pipeline step {path!r} ({type(step).__name__}) is not row-wise: its output "
                                "for a row depends on the other rows transformed with it")


def preprocessing_of(pipeline):
    """The transform part of a fitted pipeline: all steps but a final estimator without transform()."""
    from sklearn.pipeline import Pipeline

    if isinstance(pipeline, Pipeline) and not hasattr(pipeline.steps[-1][1], "transform"):
        return pipeline[:-1]
    return pipeline


def check_rowwise(pipeline, x) -> None:
    """Raise InvalidInputError naming the first step of the fitted `pipeline` that is not row-wise on x."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils import _safe_indexing
    from sklearn.utils.validation import check_is_fitted

    sample = _safe_indexing(x, np.arange(min(PROBE_ROWS, x.shape[0])))
    try:
        check_is_fitted(pipeline)
        _probe(preprocessing_of(pipeline), sample, "pipeline")
    except NotFittedError as err:
        raise InvalidInputError(f"pipeline must be fitted before valuing through it: {err}") from err


def pipeline_knn_shapley(pipeline, x_train, y_train, x_test, y_test, k: int = 5, **knn_kwargs) -> ValuationResult:
    """KNN-Shapley values of the source rows x_train [n, ...] (array or DataFrame) through the fitted
    `pipeline`'s preprocessing; its final estimator, if any, is replaced by a k-NN classifier."""
    check_rowwise(pipeline, x_train)
    transform = preprocessing_of(pipeline)
    result = knn_shapley(_dense(transform.transform(x_train)), y_train, _dense(transform.transform(x_test)),
                         y_test, k=k, **knn_kwargs)
    result.method = "pipeline_knn_shapley"
    result.params["steps"] = [type(transform).__name__] + [name for name, _ in getattr(transform, "steps", [])]
    return result


def pipeline_utility(pipeline, x_train, y_train, x_test, y_test, scorer="accuracy", **utility_kwargs) -> Utility:
    """A Utility that refits a clone of the whole (unfitted or fitted) `pipeline` on every subset of the
    source rows; checked row-wise first by fitting a clone on all rows."""
    from sklearn.base import clone

    check_rowwise(clone(pipeline).fit(x_train, y_train), x_train)
    return Utility(clone(pipeline), x_train, y_train, x_test, y_test, scorer=scorer, **utility_kwargs)
