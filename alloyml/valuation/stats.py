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
class PointStats:
    """Mergeable statistics of n points; see the module docstring."""

    inside: _Moments
    outside: _Moments | None = None
    samples: int = 0
    evaluations: int = 0
    failures: int = 0  # evaluations whose fit failed and scored the default (see Utility)

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
        return PointStats(self.inside.merge(other.inside), outside, self.samples + other.samples,
                          self.evaluations + other.evaluations, self.failures + other.failures)

    @property
    def values(self) -> np.ndarray:
        return self.inside.mean - (0.0 if self.outside is None else self.outside.mean)

    @property
    def stderr(self) -> np.ndarray:
        var = self.inside.variance_of_mean()
        if self.outside is not None:
            var = var + self.outside.variance_of_mean()
        return np.sqrt(var)

    @property
    def counts(self) -> np.ndarray:
        return self.inside.count + (0 if self.outside is None else self.outside.count)
