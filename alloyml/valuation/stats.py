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
    xty [n+1], yty and the number of subsets. Sums merge exactly (in a fixed order, bit-identically).

    Paired samples (S and N \\ S, `from_pair`) also keep the sums of each pair's mean score e = (U(S) + U(N \\ S)) / 2.
    In centred coordinates c = 1[j in S] - 1/2 the pair's rows are [1, c] and [1, -c], so the Gram is block
    diagonal: the intercept fits the mean of e and the coefficients fit o = (U(S) - U(N \\ S)) / 2 on c alone. The
    residual sum of squares is 2 * sum (e - mean e)^2 + 2 * sum (o - c.beta)^2, and only the second part is noise
    in the coefficients, with pairs - n degrees of freedom."""

    gram: np.ndarray
    xty: np.ndarray
    yty: float
    count: int
    pairs: int = 0
    pair_mean_sum: float = 0.0  # sum of e over pairs
    pair_mean_sq: float = 0.0  # sum of e^2 over pairs

    @classmethod
    def zeros(cls, n):
        return cls(np.zeros((n + 1, n + 1)), np.zeros(n + 1), 0.0, 0)

    @classmethod
    def from_sample(cls, n, inside, score):
        x = np.zeros(n + 1)
        x[0] = 1.0
        x[np.asarray(inside, np.int64) + 1] = 1.0
        return cls(np.outer(x, x), x * score, float(score) ** 2, 1)

    @classmethod
    def from_pair(cls, n, inside, score, other):
        """The two rows of a subset `inside` scoring `score` and its complement scoring `other`."""
        complement = np.setdiff1d(np.arange(n), inside)
        rows = cls.from_sample(n, inside, score).merge(cls.from_sample(n, complement, other))
        mean = (float(score) + float(other)) / 2
        return _Regression(rows.gram, rows.xty, rows.yty, rows.count, 1, mean, mean**2)

    def merge(self, other: _Regression) -> _Regression:
        return _Regression(self.gram + other.gram, self.xty + other.xty, self.yty + other.yty,
                           self.count + other.count, self.pairs + other.pairs,
                           self.pair_mean_sum + other.pair_mean_sum, self.pair_mean_sq + other.pair_mean_sq)

    def solve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(coefficients [n], stderr [n]) once the residual has a degree of freedom — more subsets than unknowns,
        or for pairs more pairs than points — and the design has full rank; None before (the caller uses the MSR
        means). A rank-deficient Gram does not always make `inv` raise, so its eigenvalues are checked."""
        n1 = len(self.xty)
        paired = self.pairs > 0
        dof = self.pairs - (n1 - 1) if paired else self.count - n1
        if dof <= 0:
            return None
        eigenvalues, eigenvectors = np.linalg.eigh(self.gram)
        if eigenvalues[0] <= 1e-10 * eigenvalues[-1]:
            return None
        inverse = (eigenvectors / eigenvalues) @ eigenvectors.T
        beta = inverse @ self.xty
        rss = self.yty - beta @ self.xty
        if paired:  # drop the pairs' mean scores around their mean: the intercept's part, no coefficient's noise
            rss -= 2 * (self.pair_mean_sq - self.pair_mean_sum**2 / self.pairs)
            # the slope block of inv(gram) is inv(2 sum c c^T); the coefficients' variance is s_o^2 inv(sum c c^T)
            # with s_o^2 = (rss / 2) / dof, i.e. (rss / dof) * that block
        residual = max(rss, 0.0) / dof
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
