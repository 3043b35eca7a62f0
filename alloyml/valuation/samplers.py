"""Samplers: how a batch of random subsets becomes per-point samples of a semivalue.

A sampler's `sample(utility, semivalue, rng, context)` draws one sample from its own generator and
`batch(..., rngs, ...)` turns one sample per generator into PointStats; the mean of the samples it
records for a point is an unbiased estimate of that point's semivalue. `prepare(utility, semivalue)`
runs once in the driver before any batch (checks, U(empty), U(N) for truncation).

Evaluations are counted as the utility values a sample asks for, whether a fit or the cache answered, so
budgets (`MaxEvaluations`) mean the same in every process.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from math import comb
from typing import NamedTuple

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.semivalues import Banzhaf, Semivalue
from alloyml.valuation.stats import PointStats, _Regression


def _failures(utility) -> int:
    return getattr(utility, "fit_failures", 0)  # games never fail


class Sample(NamedTuple):
    """One sample's per-point quantities: points [m] and values [m] (and, for two-group samplers, the
    "without" group), and the utility values it asked for."""

    points: np.ndarray
    values: np.ndarray
    evaluations: int
    out_points: np.ndarray | None = None
    out_values: np.ndarray | None = None
    meta: tuple | None = None  # sampler-specific details for `annotate` (the paired MSR subset and scores)


class Sampler(ABC):
    two_groups = False
    default_batch_size = 1

    def prepare(self, utility, semivalue: Semivalue) -> dict:
        return {}

    def batch(self, utility, semivalue: Semivalue, rngs: list[np.random.Generator],
              context: dict) -> list[PointStats]:
        """One PointStats per generator, each from one `sample` drawn only from that generator."""
        out = []
        for rng in rngs:
            failures_before = _failures(utility)
            drawn = self.sample(utility, semivalue, rng, context)
            stats = PointStats.from_samples(utility.n, drawn.points, drawn.values, drawn.out_points,
                                            drawn.out_values, samples=1, evaluations=drawn.evaluations,
                                            failures=_failures(utility) - failures_before)
            self.annotate(stats, drawn, utility.n)
            out.append(stats)
        return out

    def annotate(self, stats: PointStats, drawn: Sample, n: int) -> None:
        """Hook: add estimator-specific sums of one sample to its PointStats (none by default)."""
        return None

    @abstractmethod
    def sample(self, utility, semivalue: Semivalue, rng: np.random.Generator, context: dict) -> Sample:
        """The marginal contributions (or scores) of one sample."""

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
        context = {"importance": utility.n * semivalue.size_probabilities(utility.n),
                   "empty": utility(np.zeros(0, np.int64))}
        if self.truncation_rtol is not None:
            context["total"] = utility(np.arange(utility.n))
        return context

    def sample(self, utility, semivalue, rng, context):
        perm = rng.permutation(utility.n)
        marginals, evaluations = self._walk(utility, perm, context)
        return Sample(perm, marginals, evaluations)

    def _walk(self, utility, order, context):
        """Marginals [n] along one permutation (0 after truncation) and the evaluations they took."""
        marginals = np.zeros(len(order))
        previous, used = context["empty"], 0
        for j in range(len(order)):
            current = utility(order[: j + 1])
            used += 1
            marginals[j] = (current - previous) * context["importance"][j]
            previous = current
            if self._truncated(current, context):
                break
        return marginals, used

    def _truncated(self, score, context) -> bool:
        if self.truncation_rtol is None:
            return False
        return abs(context["total"] - score) <= self.truncation_rtol * abs(context["total"])

    def params(self):
        return {"sampler": "permutation", "truncation_rtol": self.truncation_rtol}


def _size_drawn_marginals(utility, rng, size_probabilities, size_weights=None) -> Sample:
    """One marginal per point: k ~ size_probabilities, S uniform among the other points of size k; each
    marginal multiplied by size_weights[k] when given (importance weights of a proposal)."""
    n = utility.n
    marginals = np.empty(n)
    sizes = rng.choice(n, size=n, p=size_probabilities)
    for i in range(n):
        others = np.delete(np.arange(n), i)
        subset = rng.choice(others, size=sizes[i], replace=False)
        marginals[i] = utility(np.append(subset, i)) - utility(subset)
        if size_weights is not None:
            marginals[i] *= size_weights[sizes[i]]
    return Sample(np.arange(n), marginals, 2 * n)


MAX_EXACT_STRATUM_SUBSETS = 200_000  # utility values SizeSampler(exact_sizes=...) may ask for up front


def _exact_strata(utility, size_probabilities, exact_sizes: int) -> np.ndarray:
    """[n] sum over k < exact_sizes of P(k) * (mean over every S of size k without i of U(S + i) - U(S)):
    the strata of the smallest subsets, enumerated (C(n, k) + C(n, k + 1) values for stratum k)."""
    n = utility.n
    scores = {(): utility(np.zeros(0, np.int64))} if exact_sizes else {}
    contribution = np.zeros(n)
    for k in range(exact_sizes):
        marginal_sums = np.zeros(n)
        for grown in itertools.combinations(range(n), k + 1):  # each S + i, every i of it in turn
            scores[grown] = score = utility(np.array(grown, np.int64))
            for position, i in enumerate(grown):
                marginal_sums[i] += score - scores[grown[:position] + grown[position + 1:]]
        contribution += size_probabilities[k] * marginal_sums / comb(n - 1, k)
        scores = {key: value for key, value in scores.items() if len(key) == k + 1}
    return contribution


@dataclass
class SizeSampler(Sampler):
    """One sample = one marginal per point: the size k of S is drawn from the semivalue's own P(k) and
    S uniformly among the other points of that size, so no reweighting is needed (2n evaluations).
    Efficient for semivalues concentrated on small subsets, like Beta(16, 1).

    exact_sizes: the strata k < exact_sizes are computed exactly once, in `prepare` (k = 0: U(empty) and the
    n singletons; k = 1 adds the C(n, 2) pairs), and the sizes drawn from P(k | k >= exact_sizes); a sample
    is exact_part + P(k >= exact_sizes) * marginal, so its mean is still the semivalue and the exact strata
    add no noise. Beta(16, 1) puts P(0) = 16 / (n + 15) on size 0 (14% at n = 100): the default 1 makes
    that term exact. 0 samples every size; the largest size n - 1 is always sampled."""

    exact_sizes: int = 1

    def prepare(self, utility, semivalue):
        n = utility.n
        if isinstance(self.exact_sizes, bool) or not isinstance(self.exact_sizes, int | np.integer) or \
                self.exact_sizes < 0:
            raise ConfigError(f"SizeSampler exact_sizes must be an integer >= 0, got {self.exact_sizes!r}")
        exact_sizes = min(int(self.exact_sizes), n - 1)  # the largest stratum is always sampled
        needed = sum(comb(n, k) for k in range(exact_sizes + 1))
        if needed > MAX_EXACT_STRATUM_SUBSETS:
            raise ConfigError(f"SizeSampler exact_sizes={self.exact_sizes} needs {needed} utility values up front "
                              f"at n={n} (limit {MAX_EXACT_STRATUM_SUBSETS}); use a smaller exact_sizes")
        probabilities = semivalue.size_probabilities(n)
        sampled = probabilities.copy()
        sampled[:exact_sizes] = 0.0
        rest = sampled.sum()
        if rest == 0:  # the sampled strata underflow: their marginals are multiplied by 0, any sizes do
            sampled[exact_sizes:] = 1.0
        return {"exact": _exact_strata(utility, probabilities, exact_sizes), "rest": rest,
                "sizes": sampled / sampled.sum()}

    def sample(self, utility, semivalue, rng, context):
        drawn = _size_drawn_marginals(utility, rng, context["sizes"])
        return drawn._replace(values=context["exact"] + context["rest"] * drawn.values)

    def params(self):
        return {"sampler": "size", "exact_sizes": self.exact_sizes}


MAX_REGRESSION_POINTS = 2000  # the regression estimator keeps an [n+1, n+1] Gram matrix


@dataclass
class MSRSampler(Sampler):
    """Maximum sample reuse (Wang & Jia 2023), Banzhaf only: one sample = one uniformly random subset S
    and one evaluation U(S), which updates every point — as "with i" for i in S and "without i" for the
    rest; value_i = mean(U | i in S) - mean(U | i not in S).

    estimator: "msr" (the paper's difference of means, pyDVL's MSRBanzhafValuation) or "regression": the
    same subsets, valued by least squares of U(S) on the membership indicators (the Banzhaf values are the
    coefficients of the best linear fit of U under uniform subsets — Hammer & Holzman 1992; Kernel Banzhaf,
    Liu et al. 2024). The fit explains the part of U(S) due to the other points (the subset's size above
    all), which the difference of means leaves as noise in every value; unbiased as the samples grow, and
    until there are more subsets than n + 1 the MSR means are reported. n <= 2000 (an [n+1, n+1] Gram).

    paired: one sample = a uniform subset S and its complement N \\ S (two evaluations): every point gets
    one "with" and one "without" value per sample. Each of S and N \\ S is a uniform subset, so both
    estimators stay what they are (unbiased means; the consistent least squares); the pairs are negatively
    correlated in |S|, which cancels the subset-size part of U(S) - U(N \\ S) (antithetic variates)."""

    estimator: str = "msr"
    paired: bool = False
    two_groups = True
    default_batch_size = 32

    def prepare(self, utility, semivalue):
        if not isinstance(semivalue, Banzhaf):
            raise ConfigError(
                f"MSRSampler estimates the Banzhaf semivalue only, got {semivalue.name}; "
                "use PermutationSampler or SizeSampler for it"
            )
        if self.estimator not in ("msr", "regression"):
            raise ConfigError(f"MSRSampler estimator must be 'msr' or 'regression', got {self.estimator!r}")
        if self.estimator == "regression" and utility.n > MAX_REGRESSION_POINTS:
            raise ConfigError(f"the regression estimator keeps an [n+1, n+1] matrix: n <= {MAX_REGRESSION_POINTS}"
                              f", got n={utility.n}; use estimator='msr'")
        return {}

    def annotate(self, stats, drawn, n):
        if self.estimator != "regression":
            return
        if self.paired:  # two rows of the least squares: (S, U(S)) and (N \\ S, U(N \\ S))
            stats.regression = _Regression.from_pair(n, *drawn.meta)
            return
        score = drawn.values[0] if drawn.values.size else drawn.out_values[0]
        stats.regression = _Regression.from_sample(n, drawn.points, score)

    def sample(self, utility, semivalue, rng, context):
        mask = rng.random(utility.n) < 0.5
        inside, outside = np.flatnonzero(mask), np.flatnonzero(~mask)
        score = utility(inside)
        if not self.paired:
            return Sample(inside, np.full(inside.size, score), 1, outside, np.full(outside.size, score))
        other = utility(outside)
        # every point: "with" = the score of its own side, "without" = the score of the other side
        points = np.concatenate([inside, outside])
        with_values = np.concatenate([np.full(inside.size, score), np.full(outside.size, other)])
        without_values = np.concatenate([np.full(inside.size, other), np.full(outside.size, score)])
        return Sample(points, with_values, 2, points, without_values, meta=(inside, score, other))

    def params(self):
        return {"sampler": "msr", "estimator": self.estimator, "paired": self.paired}


@dataclass
class AntitheticPermutationSampler(PermutationSampler):
    """One sample = a random permutation and its reverse; each point's sample is the mean of its two
    marginals (antithetic variates: a point early in one is late in the other, so the pair varies less
    than two independent permutations). 2n evaluations without truncation."""

    def sample(self, utility, semivalue, rng, context):
        perm = rng.permutation(utility.n)
        values, evaluations = np.zeros(utility.n), 0
        for order in (perm, perm[::-1]):
            marginals, used = self._walk(utility, order, context)
            values[order] += marginals / 2
            evaluations += used
        return Sample(np.arange(utility.n), values, evaluations)

    def params(self):
        return {"sampler": "antithetic_permutation", "truncation_rtol": self.truncation_rtol}


@dataclass
class OwenSampler(Sampler):
    """Owen sampling (Okhrati & Lipani 2021): a semivalue is an average over the inclusion probability q
    of E[U(S + i) - U(S)] with every other point in S independently with probability q. One sample takes
    `n_q` strata of equal mass of q's distribution, one q drawn uniformly within each (so the average over
    strata is unbiased), one random S per q, and gives every point its marginal against S without it:
    n + 1 evaluations per q. A point's sample is the mean over the strata."""

    n_q: int = 8

    def prepare(self, utility, semivalue):
        if self.n_q < 1:
            raise ConfigError(f"OwenSampler needs n_q >= 1, got {self.n_q}")
        semivalue.q_quantile(np.array([0.5]))  # raises for a semivalue without the q form
        return {}

    def sample(self, utility, semivalue, rng, context):
        n = utility.n
        qs = semivalue.q_quantile((np.arange(self.n_q) + rng.random(self.n_q)) / self.n_q)
        values = np.zeros(n)
        for q in qs:
            members = rng.random(n) < q
            inside = np.flatnonzero(members)
            score = utility(inside)
            for i in range(n):
                if members[i]:
                    values[i] += score - utility(inside[inside != i])
                else:
                    values[i] += utility(np.append(inside, i)) - score
        return Sample(np.arange(n), values / self.n_q, self.n_q * (n + 1))

    def params(self):
        return {"sampler": "owen", "n_q": self.n_q}


@dataclass
class StratifiedSampler(Sampler):
    """Stratified by coalition size (pyDVL's `StratifiedSampler` with stochastic size iteration): one sample
    = one marginal per point, the size k of S drawn from a proposal p(k) on 0..n-1 and S uniformly among
    the other points of that size; the marginal is weighted by P(k) / p(k), with P(k) the semivalue's own
    size distribution, so any proposal gives an unbiased estimate of any semivalue (2n evaluations).

    sizes: the proposal, unnormalised as in pyDVL's size strategies: "uniform" (1, `ConstantSampleSize`),
    "harmonic" (1 / (1 + k), `HarmonicSampleSize`) or a float a ((1 + k)^a, `PowerLawSampleSize`).
    `SizeSampler` is the special case p = P."""

    sizes: str | float = "harmonic"

    def proposal(self, n: int) -> np.ndarray:
        """[n] p(k), k = 0..n-1."""
        k = np.arange(n, dtype=np.float64)
        if self.sizes == "uniform":
            p = np.ones(n)
        elif self.sizes == "harmonic":
            p = 1.0 / (1.0 + k)
        elif isinstance(self.sizes, int | float) and not isinstance(self.sizes, bool) and np.isfinite(self.sizes):
            p = (1.0 + k) ** float(self.sizes)
        else:
            raise ConfigError(f"StratifiedSampler sizes must be 'uniform', 'harmonic' or a finite power-law "
                              f"exponent, got {self.sizes!r}")
        return p / p.sum()

    def prepare(self, utility, semivalue):
        proposal = self.proposal(utility.n)
        return {"proposal": proposal, "weights": semivalue.size_probabilities(utility.n) / proposal}

    def sample(self, utility, semivalue, rng, context):
        return _size_drawn_marginals(utility, rng, context["proposal"], context["weights"])

    def params(self):
        return {"sampler": "stratified", "sizes": self.sizes}
