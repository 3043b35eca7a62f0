"""Linear datamodeling score (LDS; Park et al. 2023, "TRAK"; dattri's `lds` metric): how well attribution
scores predict what retraining on a subset actually does.

For test point t and training subsets S_1..S_m, the attribution predicts the model output of a model
trained on S_k as the sum of the subset's scores, g_t(S_k) = sum_{j in S_k} tau[t, j]. The LDS of t is the
Spearman rank correlation between (g_t(S_k))_k and the outputs f_t(S_k) of the models retrained on S_k;
the score is its mean over test points. 1 means the attributions order the subsets exactly as retraining
does; 0, no better than chance.

Policy for undefined correlations: a test point whose predictions or outputs are constant over the subsets
has no rank correlation; it is left out of the mean and counted in `undefined` (all undefined: an error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alloyml.errors import InvalidInputError


@dataclass
class LDSResult:
    """score: mean Spearman correlation over the defined test points; per_test: [n_test] (NaN where
    undefined); undefined: how many test points had constant predictions or outputs."""

    score: float
    per_test: np.ndarray
    undefined: int


def random_subsets(n_train: int, n_subsets: int, fraction: float = 0.5, seed: int | None = None) -> np.ndarray:
    """[n_subsets, n_train] bool masks, each a uniformly random subset of round(fraction * n_train) rows
    (the fixed-size subsets of the LDS protocol); retrain on each and pass the outputs to
    `linear_datamodeling_score`."""
    if n_train < 1 or n_subsets < 1:
        raise InvalidInputError(f"n_train and n_subsets must be >= 1, got {n_train}, {n_subsets}")
    if not 0 < fraction < 1:
        raise InvalidInputError(f"fraction must be in (0, 1), got {fraction}")
    size = max(1, round(fraction * n_train))
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for row in masks:
        row[rng.choice(n_train, size=size, replace=False)] = True
    return masks


def _as_masks(subsets, n_train: int) -> np.ndarray:
    array = np.asarray(subsets) if not isinstance(subsets, list | tuple) else None
    if array is not None and array.dtype == bool:
        if array.ndim != 2 or array.shape[1] != n_train:
            raise InvalidInputError(f"subsets as masks must have shape [m, {n_train}], got {array.shape}")
        return array
    masks = np.zeros((len(subsets), n_train), dtype=bool)
    for k, subset in enumerate(subsets):
        index = np.asarray(subset, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= n_train):
            raise InvalidInputError(f"subsets[{k}] holds an index outside 0..{n_train - 1}")
        masks[k, index] = True
    return masks


def _ranks(columns: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(columns, axis=0)  # ties get their average rank, as Spearman's definition needs


def linear_datamodeling_score(attributions, subsets, outputs) -> LDSResult:
    """LDS of `attributions` [n_test, n_train] on `subsets` (m bool masks [m, n_train] or m index arrays)
    whose retrained models gave `outputs` [m, n_test] (e.g. the test loss or margin of each model)."""
    tau = np.asarray(attributions, dtype=np.float64)
    if tau.ndim != 2:
        raise InvalidInputError(f"attributions must be [n_test, n_train], got shape {tau.shape}")
    n_test, n_train = tau.shape
    masks = _as_masks(subsets, n_train)
    actual = np.asarray(outputs, dtype=np.float64)
    if actual.shape != (masks.shape[0], n_test):
        raise InvalidInputError(f"outputs must have shape [m={masks.shape[0]}, n_test={n_test}] "
                                f"(one row per subset), got {actual.shape}")
    if masks.shape[0] < 3:
        raise InvalidInputError(f"need at least 3 subsets for a rank correlation, got {masks.shape[0]}")
    for name, array in (("attributions", tau), ("outputs", actual)):
        if not np.all(np.isfinite(array)):
            raise InvalidInputError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite values")
    predicted = masks.astype(np.float64) @ tau.T  # [m, n_test]
    rp = _ranks(predicted)
    ra = _ranks(actual)
    rp -= rp.mean(0)
    ra -= ra.mean(0)
    norms = np.sqrt((rp**2).sum(0) * (ra**2).sum(0))
    defined = norms > 0
    per_test = np.full(n_test, np.nan)
    per_test[defined] = (rp * ra).sum(0)[defined] / norms[defined]
    if not defined.any():
        raise InvalidInputError("every test point has constant predicted or actual outputs over the subsets; "
                                "the LDS is undefined")
    return LDSResult(float(per_test[defined].mean()), per_test, int((~defined).sum()))
