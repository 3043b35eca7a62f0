"""Exact KNN-Shapley (Jia et al. 2019, "Efficient task-specific data valuation for nearest neighbor
algorithms", Theorem 1), vectorised for millions of training rows.

For one test point with label y, sort the N training points by distance (alpha_1 nearest). The utility
of a K-nearest-neighbour classifier trained on S, U(S) = (1/K) sum over the min(K, |S|) nearest points
of S of 1[label == y], has exact Shapley values

    s_N = m_N min(K, N) / (K N),    s_i = s_{i+1} + (m_i - m_{i+1}) / K * min(K, i) / i      (m_i = 1[y_{alpha_i} = y]),

and the values for a test set are the mean over its points. Cost per test point: one sort of N keys.

Memory is bounded by blocking over test points (a block of distances is [block, N] float32), and
blocks run on threads (numpy's sort and arithmetic release the GIL).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.result import ValuationResult

BLOCK_BYTES = 64 * 2**20  # distances held per block
_LITTLE_ENDIAN = sys.byteorder == "little"


def _check(x_train, y_train, x_test, y_test, k):
    x_train = np.asarray(x_train)
    x_test = np.asarray(x_test)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise InvalidInputError(
            f"x_train [n, d] and x_test [m, d] must be 2-D with the same d, got {x_train.shape}, {x_test.shape}"
        )
    if y_train.shape != (x_train.shape[0],) or y_test.shape != (x_test.shape[0],):
        raise InvalidInputError(f"y_train must be [{x_train.shape[0]}] and y_test [{x_test.shape[0]}], "
                                f"got {y_train.shape}, {y_test.shape}")
    if x_train.shape[0] == 0 or x_test.shape[0] == 0:
        raise InvalidInputError("x_train and x_test need at least one row each")
    if not (isinstance(k, int | np.integer) and k >= 1):
        raise InvalidInputError(f"k must be a positive integer, got {k!r}")
    if x_train.shape[0] >= 2**31:
        raise InvalidInputError("knn_shapley supports at most 2^31 - 1 training rows")
    return x_train, y_train, x_test, y_test


def _coefficients(n: int, k: int) -> np.ndarray:
    """[n-1] c_i = min(K, i) / (K i) for i = 1..n-1."""
    i = np.arange(1, n, dtype=np.float64)
    return np.minimum(k, i) / (k * i)


def _sort_by_distance(squared_distances: np.ndarray, low_words: np.ndarray):
    """Sort one test point's training rows by (distance, index); returns (order [n], match [n] float64).

    Non-negative float32 bit patterns order like the floats, so a uint64 key of (distance bits << 32 |
    index << 1 | label-match bit) makes one SIMD integer sort do the work of a stable argsort plus the
    random gather of labels, with ties broken by index deterministically."""
    keys = np.maximum(squared_distances, 0).view(np.uint32).astype(np.uint64) << np.uint64(32)
    keys |= low_words
    keys.sort()
    low = keys.view(np.uint32)[0::2] if _LITTLE_ENDIAN else keys.view(np.uint32)[1::2]
    return (low >> 1).astype(np.intp), (low & 1).astype(np.float64)


def _block_values(x_train, sq_train, codes_train, x_block, codes_block, coef, k) -> np.ndarray:
    """[n] sum over the test points of the block of their KNN-Shapley values."""
    n = x_train.shape[0]
    distances = sq_train[None, :] - 2.0 * (x_block @ x_train.T) + (x_block**2).sum(1)[:, None]  # [b, n]
    index_bits = np.arange(n, dtype=np.uint64) << np.uint64(1)
    total = np.zeros(n)
    for row, label in zip(distances, codes_block, strict=True):
        order, match = _sort_by_distance(row, index_bits | (codes_train == label))  # nearest first
        steps = (match[:-1] - match[1:]) * coef  # [n-1] s_i - s_{i+1}
        prefix = np.cumsum(steps)
        shapley = np.empty(n)
        shapley[-1] = match[-1] * min(k, n) / (k * n)  # = m_N / N unless K > N
        shapley[:-1] = shapley[-1] + prefix[-1] - (prefix - steps)  # suffix sums without reversed views
        total += np.bincount(order, weights=shapley, minlength=n)
    return total


def knn_shapley(x_train, y_train, x_test, y_test, k: int = 5, *, block_size: int | None = None,
                n_threads: int | None = None) -> ValuationResult:
    """Exact Shapley values of the training rows for a K-nearest-neighbour classifier (Euclidean).

    x_train: [n, d], y_train: [n], x_test: [m, d], y_test: [m]. Returns values [n] (mean over the test
    points; stderr 0, counts = m). Distances are computed in float32 after centring on the training
    mean; equal distances are broken by training index.
    block_size: test points per block (default: as many as fit in 64 MiB of distances).
    n_threads: blocks computed at once (default: the CPUs available to this process).
    """
    x_train, y_train, x_test, y_test = _check(x_train, y_train, x_test, y_test, k)
    n, m = x_train.shape[0], x_test.shape[0]
    labels, codes = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
    codes_train, codes_test = codes[:n].astype(np.int32), codes[n:].astype(np.int32)
    center = x_train.mean(0)
    xt = np.ascontiguousarray(x_train - center, dtype=np.float32)
    xq = np.ascontiguousarray(x_test - center, dtype=np.float32)
    sq_train = (xt**2).sum(1)
    coef = _coefficients(n, k)
    block_size = block_size or max(1, BLOCK_BYTES // (4 * n))
    starts = range(0, m, block_size)
    n_threads = n_threads or len(os.sched_getaffinity(0))

    def run(start):
        stop = min(start + block_size, m)
        return _block_values(xt, sq_train, codes_train, xq[start:stop], codes_test[start:stop], coef, k)

    total = np.zeros(n)
    if n_threads == 1 or len(starts) == 1:
        for start in starts:
            total += run(start)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            for block_total in pool.map(run, starts):  # map keeps block order: deterministic sums
                total += block_total
    return ValuationResult(total / m, np.zeros(n), np.full(n, m), "knn_shapley",
                           {"k": int(k), "n_test": int(m), "labels": labels.tolist()})
