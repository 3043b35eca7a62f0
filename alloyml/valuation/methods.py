"""Valuation methods over a utility: exact semivalues by enumeration, sampled semivalues (TMC-Shapley,
MSR-Banzhaf, Beta Shapley are one driver with different parts), and leave-one-out.

A utility is anything with `n`, `fits` and `utility(subset) -> float`: a `Utility` or a game.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.valuation.progress import sampling_progress
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_batches, run_entropy
from alloyml.valuation.samplers import MSRSampler, PermutationSampler, Sampler, SizeSampler
from alloyml.valuation.semivalues import Banzhaf, Beta, Semivalue, Shapley
from alloyml.valuation.stats import PointStats
from alloyml.valuation.stopping import Stopping
from alloyml.valuation.utility import report_failures

MAX_EXACT_POINTS = 20


def _check_utility(utility):
    if not (hasattr(utility, "n") and callable(utility)):
        raise InvalidInputError(f"utility must be a Utility or a game with `n`, got {type(utility).__name__}")


def _failures(utility) -> int:
    return getattr(utility, "fit_failures", 0)


def exact_semivalues(utility, semivalue: Semivalue) -> ValuationResult:
    """The semivalue by enumerating all 2^n subsets (n <= 20): the oracle the estimators are tested
    against."""
    _check_utility(utility)
    n = utility.n
    if n > MAX_EXACT_POINTS:
        raise InvalidInputError(f"exact enumeration needs n <= {MAX_EXACT_POINTS} points, got {n}")
    fits_before, failures_before = utility.fits, _failures(utility)
    if hasattr(utility, "check_full_set"):
        utility.check_full_set()  # a model that cannot fit all rows fails before 2^n fits
    masks = np.arange(2**n)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.uint8)  # [2^n, n] membership
    scores = np.array([utility(np.flatnonzero(row)) for row in bits])
    weights = np.exp(semivalue.log_weight(n, np.arange(n)))[bits.sum(1, dtype=np.int64).clip(max=n - 1)]
    values = np.empty(n)
    for i in range(n):
        without = masks[bits[:, i] == 0]
        values[i] = np.sum(weights[without] * (scores[without | (1 << i)] - scores[without]))
    failures = _failures(utility) - failures_before
    report_failures(utility, failures, 2**n, f"exact_{semivalue.name}")
    return ValuationResult(values, np.zeros(n), np.full(n, 2 ** (n - 1)), f"exact_{semivalue.name}",
                           {"semivalue": semivalue.name, **semivalue.params()},
                           utility_evaluations=utility.fits - fits_before, fit_failures=failures)


def exact_shapley(utility) -> ValuationResult:
    return exact_semivalues(utility, Shapley())


def exact_banzhaf(utility) -> ValuationResult:
    return exact_semivalues(utility, Banzhaf())


def _sampler_batch(sampler, utility, semivalue, context, rngs) -> list[PointStats]:
    return sampler.batch(utility, semivalue, rngs, context)


def sampled_semivalues(utility, semivalue: Semivalue, sampler: Sampler, stopping: Stopping, *,
                       batch_size: int | None = None, n_jobs: int = 1, seed: int | None = None,
                       method: str | None = None,
                       progress: bool | Callable[[PointStats], None] = False) -> ValuationResult:
    """Estimate `semivalue` with `sampler` until `stopping` fires.

    batch_size: samples per Ray task (the stopping criterion is checked after every sample).
    n_jobs: 1 in this process, k > 1 Ray tasks in flight, -1 all Ray CPUs.
    progress: True for a rich progress display, or a callable given the running PointStats per batch.
    The same seed gives bit-identical values for any n_jobs and batch_size (except with MaxTime): each
    sample has its own generator and a `Utility`'s randomised estimators are seeded from the seed and the
    subset (see `Utility`). utility_evaluations counts U(S) values asked for, cached or not: the batches'
    plus the sampler's preparation (U(empty), U(N)).
    """
    _check_utility(utility)
    if not isinstance(semivalue, Semivalue) or not isinstance(sampler, Sampler):
        raise ConfigError("semivalue must be a Semivalue (Shapley(), Banzhaf(), Beta(a, b)) and sampler a "
                          f"Sampler (PermutationSampler(), MSRSampler(), ...), got {semivalue!r}, {sampler!r}")
    entropy = run_entropy(seed)
    if hasattr(utility, "reseed"):
        utility.reseed(entropy)
    failures_before = _failures(utility)
    prepare_calls = _CallCounter(utility)
    if hasattr(utility, "check_full_set"):
        prepare_calls(np.arange(utility.n))  # raises FitFailureError before sampling if U(N) cannot be fitted
    context = sampler.prepare(prepare_calls, semivalue)
    prepare_failures = _failures(utility) - failures_before  # batches count their own (maybe elsewhere)
    batch_fn = functools.partial(_sampler_batch, sampler, utility, semivalue, context)
    name = method or f"{semivalue.name}_{sampler.params()['sampler']}"
    with sampling_progress(progress, name) as on_batch:
        stats, info = run_batches(batch_fn, utility.n, stopping, two_groups=sampler.two_groups,
                                  batch_size=batch_size or sampler.default_batch_size, n_jobs=n_jobs,
                                  entropy=entropy, evaluations_before=prepare_calls.calls, progress=on_batch)
    evaluations, failures = stats.evaluations, stats.failures + prepare_failures
    report_failures(utility, failures, evaluations, name)
    params = {"semivalue": semivalue.name, **semivalue.params(), **sampler.params(), "seed": seed,
              "n_jobs": n_jobs, "samples": stats.samples, **info}
    return ValuationResult(stats.values, stats.stderr, stats.counts, name, params,
                           utility_evaluations=evaluations, fit_failures=failures)


class _CallCounter:
    """The utility seen by a sampler's `prepare`, counting the values it asks for."""

    def __init__(self, utility):
        self.utility, self.n, self.calls = utility, utility.n, 0

    def __call__(self, subset) -> float:
        self.calls += 1
        return self.utility(subset)


def tmc_shapley(utility, stopping: Stopping, *, truncation_rtol: float | None = 0.01, **kwargs) -> ValuationResult:
    """Truncated Monte Carlo Shapley (Ghorbani & Zou 2019): permutations, truncated once the prefix
    scores within `truncation_rtol` of U(N)."""
    return sampled_semivalues(utility, Shapley(), PermutationSampler(truncation_rtol), stopping,
                              method="tmc_shapley", **kwargs)


def msr_banzhaf(utility, stopping: Stopping, *, estimator: str = "msr", paired: bool = False,
                **kwargs) -> ValuationResult:
    """Data Banzhaf with maximum-sample-reuse sampling (Wang & Jia 2023). estimator: "msr" (difference of
    means, as the paper and pyDVL) or "regression" (least squares on the same subsets); paired: each
    sample is a subset and its complement (two evaluations). See `MSRSampler`."""
    return sampled_semivalues(utility, Banzhaf(), MSRSampler(estimator, paired), stopping, method="msr_banzhaf",
                              **kwargs)


def beta_shapley(utility, stopping: Stopping, *, alpha: float = 16.0, beta: float = 1.0,
                 sampler: Sampler | None = None, **kwargs) -> ValuationResult:
    """Beta(alpha, beta) Shapley (Kwon & Zou 2022), by default with subset sizes drawn from its weights and the
    size-0 stratum (U({i}) - U(empty), weight 16 / (n + 15) for Beta(16, 1)) computed exactly:
    `SizeSampler(exact_sizes=1)`."""
    return sampled_semivalues(utility, Beta(alpha, beta), sampler or SizeSampler(), stopping,
                              method="beta_shapley", **kwargs)


def leave_one_out(utility) -> ValuationResult:
    """value_i = U(N) - U(N \\ {i}); n + 1 evaluations."""
    _check_utility(utility)
    n = utility.n
    fits_before, failures_before = utility.fits, _failures(utility)
    everyone = np.arange(n)
    total = utility(everyone)  # a Utility raises FitFailureError here if the full set cannot be fitted
    values = np.array([total - utility(np.delete(everyone, i)) for i in range(n)])
    failures = _failures(utility) - failures_before
    report_failures(utility, failures, n + 1, "loo")
    return ValuationResult(values, np.zeros(n), np.ones(n), "loo", {},
                           utility_evaluations=utility.fits - fits_before, fit_failures=failures)
