"""Exact KNN-Shapley (Jia et al. 2019, "Efficient task-specific data valuation for nearest neighbor
algorithms", Theorem 1), vectorised for millions of training rows.

For one test point with label y, sort the N training points by distance (alpha_1 nearest). The utility
of a K-nearest-neighbour classifier trained on S, U(S) = (1/K) sum over the min(K, |S|) nearest points
of S of 1[label == y], has exact Shapley values

    s_N = m_N min(K, N) / (K N),    s_i = s_{i+1} + (m_i - m_{i+1}) / K * min(K, i) / i      (m_i = 1[y_{alpha_i} = y]),

and the values for a test set are the mean over its points. Cost per test point: one sort of N keys.

Exact under ties: distances are computed in float64 with one matrix product (fast, but off by up to a
bound delta from the squared distance of direct differences), sorted as 64-bit integer keys that also carry
the row index (ties broken by index) and the label-match bit. Wherever two neighbours in that order are
closer than the rounding bound allows to separate — equal distances from duplicate rows or integer
features, or genuine near-ties — and their match bits differ (only then does the order change a value),
the run is re-sorted by the squared distance of direct differences, then by index. So the order is the
order of direct float64 differences with ties broken by training index, the one a brute-force reference
uses.

Memory is bounded by blocking over test points (a block of distances is [block, N] float64), and
blocks run on threads (numpy's sort and arithmetic release the GIL).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.checks import check_features, check_labels, check_two_classes
from alloyml.valuation.progress import counted_progress
from alloyml.valuation.result import ValuationResult

BLOCK_BYTES = 64 * 2**20  # distances held per block
_UNIT_ROUNDOFF = 2.0**-53
_LITTLE_ENDIAN = sys.byteorder == "little"


def _check(x_train, y_train, x_test, y_test, k):
    x_train = np.asarray(x_train)
    x_test = np.asarray(x_test)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise InvalidInputError(
            f"x_train [n, d] and x_test [m, d] must be 2-D with the same d, got {x_train.shape}, {x_test.shape}"
        )
    if np.shape(y_train) != (x_train.shape[0],) or np.shape(y_test) != (x_test.shape[0],):
        raise InvalidInputError(f"y_train must be [{x_train.shape[0]}] and y_test [{x_test.shape[0]}], "
                                f"got {np.shape(y_train)}, {np.shape(y_test)}")
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise InvalidInputError("x_train and x_test need at least one row each")
    if x_train.dtype.kind not in "biuf" or x_test.dtype.kind not in "biuf":
        raise InvalidInputError(f"x_train and x_test must be numeric, got dtypes {x_train.dtype}, {x_test.dtype}; "
                                "encode categories first (or use pipeline_knn_shapley)")
    if not (isinstance(k, int | np.integer) and k >= 1):
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if k > x_train.shape[0]:
        raise InvalidInputError(f"k={k} exceeds the {x_train.shape[0]} training rows; choose k <= n")
    if x_train.shape[0] >= 2**31:
        raise InvalidInputError("knn_shapley supports at most 2^31 - 1 training rows")
    check_features(x_train, "x_train")
    check_features(x_test, "x_test")
    y_train = check_labels(y_train, "y_train", classifier=True)
    y_test = check_labels(y_test, "y_test", classifier=True)
    check_two_classes(y_train, "y_train")
    return x_train, y_train, x_test, y_test


def _coefficients(n: int, k: int) -> np.ndarray:
    """[n-1] c_i = min(K, i) / (K i) for i = 1..n-1."""
    i = np.arange(1, n, dtype=np.float64)
    return np.minimum(k, i) / (k * i)


def _key_layout(n: int) -> tuple[int, np.uint64]:
    """Low bits of a sort key: the row index and one label-match bit; the rest hold the distance."""
    low = int(n - 1).bit_length() + 1
    return low, np.uint64((1 << low) - 1)


def _sort_by_distance(squared: np.ndarray, low_words: np.ndarray, low: int, low_mask: np.uint64):
    """Sort one test point's rows by (approximate distance, index); returns the sorted keys [n].

    Non-negative float64 bit patterns order like the floats, so keys of (distance bits with the low
    `low` bits cleared | index << 1 | match bit) make one integer sort do the work of a stable argsort
    plus the random gather of labels."""
    keys = np.maximum(squared, 0.0).view(np.uint64) & ~low_mask
    keys |= low_words
    keys.sort()
    return keys


def _resolve_near_ties(keys, low, low_mask, delta, x_train, point, match_train):
    """(order [n], match [n]) from the sorted keys, with every run of neighbours that rounding cannot
    separate re-sorted by the squared distance of direct float64 differences, then by index."""
    low_word = keys.view(np.uint32)[0::2] if _LITTLE_ENDIAN else keys.view(np.uint32)[1::2]  # low <= 32 bits
    low_word = low_word & np.uint32(int(low_mask))
    order = (low_word >> np.uint32(1)).astype(np.intp)
    match = (low_word & np.uint32(1)).astype(np.float64)
    lower = (keys & ~low_mask).view(np.float64)  # the distance truncated to its kept bits, sorted
    # p and p + 1 are separated for sure when the gap exceeds truncation (relative) + rounding on each side
    threshold = lower[1:] * 2.0 ** (low - 52)
    threshold += 3 * delta
    close = np.subtract(lower[1:], lower[:-1]) <= threshold
    if not close.any():
        return order, match
    # runs of uncertain neighbours (few): position p joins p + 1 wherever close[p]
    joins = np.flatnonzero(close)
    positions = np.union1d(joins, joins + 1)
    group = np.cumsum(~np.isin(positions - 1, joins))  # run number of each position, from 1
    first = np.flatnonzero(np.r_[True, np.diff(group) > 0])[group - 1]  # where each position's run starts
    # only runs whose match bits differ can change a value: equal bits give equal values in any order
    mixed = np.zeros(group[-1] + 1, bool)
    np.logical_or.at(mixed, group, match[positions] != match[positions[first]])
    keep = mixed[group]
    positions, group = positions[keep], group[keep]
    if positions.size == 0:
        return order, match
    rows = order[positions]
    exact = ((x_train[rows] - point) ** 2).sum(1)
    resorted = rows[np.lexsort((rows, exact, group))]
    order[positions] = resorted
    match[positions] = match_train[resorted]
    return order, match


def _block_values(x_train, xc_train, sq_train, codes_train, x_block, xc_block, codes_block, coef, k) -> np.ndarray:
    """[n] sum over the test points of the block of their KNN-Shapley values."""
    n = x_train.shape[0]
    low, low_mask = _key_layout(n)
    sq_block = (xc_block**2).sum(1)
    distances = sq_train[None, :] - 2.0 * (xc_block @ xc_train.T) + sq_block[:, None]  # [b, n]
    # rounding bound of the product form against direct differences (see the module docstring)
    d = x_train.shape[1]
    deltas = (4 * d + 16) * _UNIT_ROUNDOFF * (sq_train.max() + sq_block)
    index_bits = np.arange(n, dtype=np.uint64) << np.uint64(1)
    total = np.zeros(n)
    for row, label, point, delta in zip(distances, codes_block, x_block, deltas, strict=True):
        match_train = codes_train == label
        keys = _sort_by_distance(row, index_bits | match_train, low, low_mask)
        order, match = _resolve_near_ties(keys, low, low_mask, delta, x_train, point, match_train)
        steps = (match[:-1] - match[1:]) * coef  # [n-1] s_i - s_{i+1}
        prefix = np.cumsum(steps)
        shapley = np.empty(n)
        shapley[-1] = match[-1] * min(k, n) / (k * n)  # = m_N / N unless K > N
        shapley[:-1] = shapley[-1] + prefix[-1] - (prefix - steps)  # suffix sums without reversed views
        total += np.bincount(order, weights=shapley, minlength=n)
    return total


def knn_shapley(x_train, y_train, x_test, y_test, k: int = 5, *, block_size: int | None = None,
                n_threads: int | None = None, progress: bool = False) -> ValuationResult:
    """Exact Shapley values of the training rows for a K-nearest-neighbour classifier (Euclidean).

    x_train: [n, d], y_train: [n], x_test: [m, d], y_test: [m]. Returns values [n] (mean over the test
    points; stderr 0, counts = m). Exact: neighbours are ordered by squared Euclidean distance of direct
    float64 differences, equal distances broken by training index (see the module docstring).
    Refused before any work: non-finite features, non-finite or continuous labels, k > n, a one-class
    y_train.
    block_size: test points per block (default: as many as fit in 64 MiB of distances).
    n_threads: blocks computed at once (default: the CPUs available to this process).
    progress: show a rich progress bar over the test blocks.
    """
    x_train, y_train, x_test, y_test = _check(x_train, y_train, x_test, y_test, k)
    n, m = x_train.shape[0], x_test.shape[0]
    labels, codes = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
    codes_train, codes_test = codes[:n].astype(np.int32), codes[n:].astype(np.int32)
    x64 = np.ascontiguousarray(x_train, dtype=np.float64)
    q64 = np.ascontiguousarray(x_test, dtype=np.float64)
    center = x64.mean(0)  # centring keeps the product form's rounding small
    xt, xq = x64 - center, q64 - center
    sq_train = (xt**2).sum(1)
    coef = _coefficients(n, k)
    block_size = block_size or max(1, BLOCK_BYTES // (8 * n))
    starts = range(0, m, block_size)
    n_threads = n_threads or len(os.sched_getaffinity(0))

    def run(start):
        stop = min(start + block_size, m)
        return _block_values(x64, xt, sq_train, codes_train, q64[start:stop], xq[start:stop],
                             codes_test[start:stop], coef, k)

    total = np.zeros(n)
    with counted_progress(progress, "knn_shapley", len(starts)) as advance:
        if n_threads == 1 or len(starts) == 1:
            for start in starts:
                total += run(start)
                advance()
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                for block_total in pool.map(run, starts):  # map keeps block order: deterministic sums
                    total += block_total
                    advance()
    return ValuationResult(total / m, np.zeros(n), np.full(n, m), "knn_shapley",
                           {"k": int(k), "n_test": int(m), "labels": labels.tolist()})
