"""How good are the values? Noisy-label detection and point-removal curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.result import ValuationResult


def flip_labels(y, fraction: float = 0.1, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flip `fraction` of the labels, each to a different class drawn uniformly.

    Returns (noisy labels [n], indices of the flipped rows, sorted)."""
    y = np.asarray(y)
    classes = np.unique(y)
    if classes.size < 2 or not 0 <= fraction <= 1:
        raise InvalidInputError(f"flip_labels needs >= 2 classes and 0 <= fraction <= 1, "
                                f"got {classes.size} classes, fraction={fraction}")
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(y.shape[0], size=int(round(fraction * y.shape[0])), replace=False))
    noisy = y.copy()
    codes = np.searchsorted(classes, y[flipped])
    shift = rng.integers(1, classes.size, size=flipped.size)  # never 0: always a different class
    noisy[flipped] = classes[(codes + shift) % classes.size]
    return noisy, flipped


@dataclass
class DetectionScores:
    """Flagging the lowest-valued rows as noisy: precision, recall, F1 of flagging as many rows as are
    noisy (or `n_flagged`), and the ROC AUC of -value as a noisiness score."""

    precision: float
    recall: float
    f1: float
    auc: float
    n_flagged: int


def noisy_label_detection(result: ValuationResult, noisy_indices, n_flagged: int | None = None) -> DetectionScores:
    """Score `result` at finding the rows in `noisy_indices` (ids as in `result.indices`)."""
    from sklearn.metrics import roc_auc_score

    is_noisy = np.isin(result.indices, np.asarray(noisy_indices))
    if is_noisy.all() or not is_noisy.any():
        raise InvalidInputError("noisy_indices must name some, but not all, points of the result")
    n_flagged = int(is_noisy.sum()) if n_flagged is None else n_flagged
    flagged = np.isin(result.indices, result.lowest(n_flagged))
    hits = np.sum(flagged & is_noisy)
    precision = hits / max(n_flagged, 1)
    recall = hits / is_noisy.sum()
    f1 = 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
    return DetectionScores(float(precision), float(recall), float(f1),
                           float(roc_auc_score(is_noisy, -result.values)), n_flagged)


def point_removal_curve(result: ValuationResult, utility, fractions=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                        highest_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Remove the highest- (or lowest-) valued fraction of the training rows, refit, score.

    utility: the `Utility` whose training rows `result` values (its `indices` are row positions).
    Returns (fractions [f], scores [f]). Good values make scores fall fast when the highest go first
    and rise (noise removed) when the lowest go first."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if len(result) != utility.n or np.any((fractions < 0) | (fractions > 1)):
        raise InvalidInputError(f"result must value the utility's {utility.n} rows and fractions lie in "
                                f"[0, 1]; got {len(result)} values, fractions {fractions.tolist()}")
    order = result.highest(len(result)) if highest_first else result.lowest(len(result))
    scores = [utility(order[int(round(f * utility.n)):]) for f in fractions]
    return fractions, np.asarray(scores)
