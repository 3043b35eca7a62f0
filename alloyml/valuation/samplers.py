"""Samplers: how a batch of random subsets becomes per-point samples of a semivalue.

A sampler's `batch(utility, semivalue, rng, n_samples)` returns the PointStats of `n_samples` samples;
the mean of the samples it records for a point is an unbiased estimate of that point's semivalue.
`prepare(utility, semivalue)` runs once in the driver before any batch (checks, U(N) for truncation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.semivalues import Banzhaf, Semivalue
from alloyml.valuation.stats import PointStats


class Sampler(ABC):
    two_groups = False
    default_batch_size = 1

    def prepare(self, utility, semivalue: Semivalue) -> dict:
        return {}

    @abstractmethod
    def batch(self, utility, semivalue: Semivalue, rng: np.random.Generator, n_samples: int,
              context: dict) -> PointStats:
        """Marginal contributions of `n_samples` samples."""

    def params(self) -> dict:
        return {"sampler": type(self).__name__}


@dataclass
class PermutationSampler(Sampler):
    """One sample = one random permutation; every point gets the marginal it adds to its prefix
    (n evaluations). In a uniform permutation the prefix size is uniform on 0..n-1, so a marginal at
    size k is reweighted by n * P(k) — 1 for Shapley, the Beta weights for Beta Shapley.

    truncation_rtol: TMC-Shapley (Ghorbani & Zou 2019): once |U(N) - U(prefix)| <= rtol * |U(N)|, the
    remaining marginals of the permutation are taken as 0 without fitting. None disables truncation.
    """

    truncation_rtol: float | None = None

    def prepare(self, utility, semivalue):
        if self.truncation_rtol is not None and self.truncation_rtol < 0:
            raise ConfigError(f"truncation_rtol must be >= 0 or None, got {self.truncation_rtol}")
        context = {"importance": utility.n * semivalue.size_probabilities(utility.n)}
        if self.truncation_rtol is not None:
            context["total"] = utility(np.arange(utility.n))
        return context

    def batch(self, utility, semivalue, rng, n_samples, context):
        n = utility.n
        importance = context["importance"]
        fits_before = utility.fits
        points = np.empty((n_samples, n), dtype=np.int64)
        marginals = np.zeros((n_samples, n))
        for s in range(n_samples):
            perm = rng.permutation(n)
            points[s] = perm
            previous = utility(perm[:0])
            for j in range(n):
                current = utility(perm[: j + 1])
                marginals[s, j] = (current - previous) * importance[j]
                previous = current
                if self._truncated(current, context):
                    break
        return PointStats.from_samples(n, points.ravel(), marginals.ravel(), samples=n_samples,
                                       evaluations=utility.fits - fits_before)

    def _truncated(self, score, context) -> bool:
        if self.truncation_rtol is None:
            return False
        return abs(context["total"] - score) <= self.truncation_rtol * abs(context["total"])

    def params(self):
        return {"sampler": "permutation", "truncation_rtol": self.truncation_rtol}


@dataclass
class SizeSampler(Sampler):
    """One sample = one marginal per point: the size k of S is drawn from the semivalue's own P(k) and
    S uniformly among the other points of that size, so no reweighting is needed (2n evaluations).
    Efficient for semivalues concentrated on small subsets, like Beta(16, 1)."""

    def prepare(self, utility, semivalue):
        return {"sizes": semivalue.size_probabilities(utility.n)}

    def batch(self, utility, semivalue, rng, n_samples, context):
        n = utility.n
        fits_before = utility.fits
        marginals = np.empty((n_samples, n))
        for s in range(n_samples):
            sizes = rng.choice(n, size=n, p=context["sizes"])
            for i in range(n):
                others = np.delete(np.arange(n), i)
                subset = rng.choice(others, size=sizes[i], replace=False)
                marginals[s, i] = utility(np.append(subset, i)) - utility(subset)
        points = np.tile(np.arange(n), n_samples)
        return PointStats.from_samples(n, points, marginals.ravel(), samples=n_samples,
                                       evaluations=utility.fits - fits_before)

    def params(self):
        return {"sampler": "size"}


@dataclass
class MSRSampler(Sampler):
    """Maximum sample reuse (Wang & Jia 2023), Banzhaf only: one sample = one uniformly random subset S
    and one evaluation U(S), which updates every point — as "with i" for i in S and "without i" for the
    rest; value_i = mean(U | i in S) - mean(U | i not in S)."""

    two_groups = True
    default_batch_size = 32

    def prepare(self, utility, semivalue):
        if not isinstance(semivalue, Banzhaf):
            raise ConfigError(
                f"MSRSampler estimates the Banzhaf semivalue only, got {semivalue.name}; "
                "use PermutationSampler or SizeSampler for it"
            )
        return {}

    def batch(self, utility, semivalue, rng, n_samples, context):
        n = utility.n
        fits_before = utility.fits
        masks = rng.random((n_samples, n)) < 0.5
        scores = np.array([utility(np.flatnonzero(mask)) for mask in masks])
        in_rows, in_points = np.nonzero(masks)
        out_rows, out_points = np.nonzero(~masks)
        return PointStats.from_samples(n, in_points, scores[in_rows], out_points, scores[out_rows],
                                       samples=n_samples, evaluations=utility.fits - fits_before)

    def params(self):
        return {"sampler": "msr"}
