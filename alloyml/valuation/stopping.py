"""Stopping criteria for sampling methods, combinable with `&` (both) and `|` (either).

The driver calls `criterion(stats, elapsed_s)` after each sample is merged (in sample order), so any
criterion that does not look at the clock stops at the same sample whatever the number of workers or
the batch size.
`MaxTime` is the exception: it trades reproducibility for a wall-clock budget.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.stats import PointStats


class Stopping(ABC):
    @abstractmethod
    def __call__(self, stats: PointStats, elapsed_s: float) -> bool:
        """True when sampling should stop."""

    def reset(self) -> Stopping:
        """A fresh copy for a new run (criteria with memory, like RankStability, keep state)."""
        return self

    def __and__(self, other: Stopping) -> Stopping:
        return _Combined(self, other, all)

    def __or__(self, other: Stopping) -> Stopping:
        return _Combined(self, other, any)


class _Combined(Stopping):
    def __init__(self, left, right, combine):
        self.left, self.right, self.combine = left, right, combine

    def __call__(self, stats, elapsed_s):
        # evaluate both so stateful criteria see every check
        return self.combine([self.left(stats, elapsed_s), self.right(stats, elapsed_s)])

    def reset(self):
        return _Combined(self.left.reset(), self.right.reset(), self.combine)

    def __repr__(self):
        return f"({self.left!r} {'&' if self.combine is all else '|'} {self.right!r})"


class _AtLeast(Stopping):
    """Stop once a count (or seconds) measured on the run reaches `n`."""

    what = ""

    def __init__(self, n):
        if n <= 0:
            raise ConfigError(f"{type(self).__name__} needs a positive limit, got {n}")
        self.n = n

    @abstractmethod
    def measure(self, stats: PointStats, elapsed_s: float):
        """The count (or seconds) compared against `n`."""

    def __call__(self, stats, elapsed_s):
        return bool(self.measure(stats, elapsed_s) >= self.n)

    def __repr__(self):
        return f"{type(self).__name__}({self.n})"


class MaxSamples(_AtLeast):
    """Stop after `n` samples (permutations, subsets or bags, as the sampler counts them)."""

    def measure(self, stats, elapsed_s):
        return stats.samples


class MinUpdates(_AtLeast):
    """Stop once every point's value has received at least `n` updates."""

    def measure(self, stats, elapsed_s):
        return stats.counts.min()


class MaxEvaluations(_AtLeast):
    """Stop at the first sample that brings the utility evaluations (values asked for, fitted or cached)
    to `n`: exactly `n` for one-evaluation samples (MSR, bags); a paired MSR sample (two evaluations) can pass
    it by one, a permutation by its own length."""

    def measure(self, stats, elapsed_s):
        return stats.evaluations


class MaxTime(_AtLeast):
    """Stop after `n` seconds of wall time (not reproducible across machines or worker counts)."""

    def measure(self, stats, elapsed_s):
        return elapsed_s


class StandardErrorThreshold(Stopping):
    """Stop once every point's standard error is <= `threshold` (absolute, or relative to the spread of
    the values when `relative=True`)."""

    def __init__(self, threshold: float, relative: bool = False):
        if threshold <= 0:
            raise ConfigError(f"StandardErrorThreshold needs threshold > 0, got {threshold}")
        self.threshold, self.relative = threshold, relative

    def __call__(self, stats, elapsed_s):
        scale = np.ptp(stats.values) if self.relative else 1.0
        return bool(np.all(stats.stderr <= self.threshold * scale))

    def __repr__(self):
        return f"StandardErrorThreshold({self.threshold}, relative={self.relative})"


class RankStability(Stopping):
    """Stop when the Spearman correlation between the values at consecutive checks has stayed
    >= `min_correlation` for `patience` checks in a row.

    Checks are every `every` samples (the driver offers one after each sample), so the result does not
    depend on the batch size. Early on values move little per check (and truncated permutations leave many
    ties at 0), so pair it with a floor: `RankStability(0.99) & MinUpdates(20)`."""

    def __init__(self, min_correlation: float = 0.99, patience: int = 3, every: int = 1):
        if not -1 < min_correlation < 1:
            raise ConfigError(f"RankStability needs -1 < min_correlation < 1 (a Spearman correlation; 1 is "
                              f"never reached reliably), got {min_correlation}")
        if patience < 1 or every < 1:
            raise ConfigError(f"RankStability needs patience >= 1 and every >= 1, got {patience}, {every}")
        self.min_correlation, self.patience, self.every = min_correlation, patience, every
        self._previous = None
        self._streak = 0

    def __call__(self, stats, elapsed_s):
        from scipy.stats import spearmanr

        if stats.samples % self.every:
            return False
        values = stats.values
        if self._previous is not None and np.ptp(values) > 0 and np.ptp(self._previous) > 0:
            stable = spearmanr(values, self._previous).statistic >= self.min_correlation
            self._streak = self._streak + 1 if stable else 0
        self._previous = values.copy()
        return self._streak >= self.patience

    def reset(self):
        return RankStability(self.min_correlation, self.patience, self.every)

    def __repr__(self):
        return f"RankStability({self.min_correlation}, patience={self.patience}, every={self.every})"
