"""Per-point running statistics that merge exactly: what a sampling batch returns and the driver folds in.

Each point keeps count, mean and sum of squared deviations (M2) for two groups of samples: "in" (a
marginal contribution, or U(S) with the point in S) and "out" (U(S) with the point not in S, used by
MSR-Banzhaf only). value = mean_in - mean_out. Merging uses Chan et al.'s pairwise formula, so
merging batches in a fixed order gives bit-identical results however the batches were computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Moments:
    count: np.ndarray  # [n] int64
    mean: np.ndarray  # [n] float64
    m2: np.ndarray  # [n] float64

    @classmethod
    def zeros(cls, n):
        return cls(np.zeros(n, np.int64), np.zeros(n), np.zeros(n))

    @classmethod
    def from_samples(cls, n, points, values):
        count = np.bincount(points, minlength=n)
        safe = np.maximum(count, 1)
        mean = np.bincount(points, weights=values, minlength=n) / safe
        m2 = np.bincount(points, weights=(values - mean[points]) ** 2, minlength=n)
        return cls(count.astype(np.int64), mean, m2)

    def merge(self, other: _Moments) -> _Moments:
        total = self.count + other.count
        safe = np.maximum(total, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / safe
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        return _Moments(total, mean, m2)

    def variance_of_mean(self):
        """[n] var / count with the sample variance; inf where fewer than 2 samples."""
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.m2 / (self.count - 1) / self.count
        return np.where(self.count >= 2, out, np.inf)


@dataclass
class _Regression:
    """Sums for least squares of U(S) on [1, 1[j in S] for every j] over uniform subsets (Banzhaf as the
    coefficients of the best linear fit, Hammer & Holzman 1992; the Kernel-Banzhaf estimator): gram [n+1, n+1],
    xty [n+1], yty and the number of subsets. Sums merge exactly (in a fixed order, bit-identically)."""

    gram: np.ndarray
    xty: np.ndarray
    yty: float
    count: int

    @classmethod
    def zeros(cls, n):
        return cls(np.zeros((n + 1, n + 1)), np.zeros(n + 1), 0.0, 0)

    @classmethod
    def from_sample(cls, n, inside, score):
        x = np.zeros(n + 1)
        x[0] = 1.0
        x[np.asarray(inside, np.int64) + 1] = 1.0
        return cls(np.outer(x, x), x * score, float(score) ** 2, 1)

    def merge(self, other: _Regression) -> _Regression:
        return _Regression(self.gram + other.gram, self.xty + other.xty, self.yty + other.yty,
                           self.count + other.count)

    def solve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(coefficients [n], stderr [n]) once there are more subsets than unknowns and the design has full
        rank; None before (the caller uses the MSR means)."""
        n1 = len(self.xty)
        if self.count <= n1:
            return None
        try:
            inverse = np.linalg.inv(self.gram)
        except np.linalg.LinAlgError:
            return None
        beta = inverse @ self.xty
        residual = max(self.yty - beta @ self.xty, 0.0) / (self.count - n1)
        return beta[1:], np.sqrt(np.maximum(np.diag(inverse)[1:], 0.0) * residual)


@dataclass
class PointStats:
    """Mergeable statistics of n points; see the module docstring."""

    inside: _Moments
    outside: _Moments | None = None
    samples: int = 0
    evaluations: int = 0
    failures: int = 0  # evaluations whose fit failed and scored the default (see Utility)
    regression: _Regression | None = None  # MSRSampler(estimator="regression") only

    @classmethod
    def zeros(cls, n: int, two_groups: bool = False) -> PointStats:
        return cls(_Moments.zeros(n), _Moments.zeros(n) if two_groups else None)

    @classmethod
    def from_samples(cls, n, points, values, out_points=None, out_values=None, samples=0, evaluations=0,
                     failures=0):
        """points/values: [m] int / float pairs (one sample of one point's quantity each)."""
        points = np.asarray(points, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        outside = None
        if out_points is not None:
            outside = _Moments.from_samples(
                n, np.asarray(out_points, np.int64), np.asarray(out_values, np.float64)
            )
        return cls(_Moments.from_samples(n, points, values), outside, samples, evaluations, failures)

    def merge(self, other: PointStats) -> PointStats:
        outside = None if self.outside is None else self.outside.merge(other.outside)
        regression = other.regression if self.regression is None else (
            self.regression if other.regression is None else self.regression.merge(other.regression))
        return PointStats(self.inside.merge(other.inside), outside, self.samples + other.samples,
                          self.evaluations + other.evaluations, self.failures + other.failures, regression)

    def _solved(self):
        if self.regression is None:
            return None
        key = (self.regression.count, self.samples)
        if getattr(self, "_solution_key", None) != key:
            self._solution, self._solution_key = self.regression.solve(), key
        return self._solution

    @property
    def values(self) -> np.ndarray:
        solved = self._solved()
        if solved is not None:
            return solved[0]
        return self.inside.mean - (0.0 if self.outside is None else self.outside.mean)

    @property
    def stderr(self) -> np.ndarray:
        solved = self._solved()
        if solved is not None:
            return solved[1]
        var = self.inside.variance_of_mean()
        if self.outside is not None:
            var = var + self.outside.variance_of_mean()
        return np.sqrt(var)

    @property
    def counts(self) -> np.ndarray:
        return self.inside.count + (0 if self.outside is None else self.outside.count)
