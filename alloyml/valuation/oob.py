"""Data-OOB (Kwon & Zou 2023): the value of a training row is how well the bagged models that did not
see it predict it — cheap (one fit per bag, no test set) and a strong detector of mislabelled rows.
"""

from __future__ import annotations

import functools

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.progress import sampling_progress
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_batches, run_entropy
from alloyml.valuation.stats import PointStats
from alloyml.valuation.stopping import MaxSamples, Stopping
from alloyml.valuation.utility import Utility, report_failures


def _one_bag(utility: Utility, model, classifier: bool, bag_size: int, rng: np.random.Generator) -> PointStats:
    n = utility.n
    bag = rng.integers(0, n, size=bag_size)
    random_state = int(rng.integers(2**31))  # the bag's fit is seeded from the bag's own generator
    out_of_bag = np.setdiff1d(np.arange(n), bag)
    if out_of_bag.size == 0:
        return PointStats.from_samples(n, np.zeros(0, np.int64), np.zeros(0), samples=1)
    from sklearn.utils import _safe_indexing

    try:
        estimator = utility.fit_subset(bag, model, random_state=random_state)
        predicted = estimator.predict(_safe_indexing(utility.x_train, out_of_bag))
    except Exception as err:  # a failed bag contributes nothing; past the tolerated rate it raises
        utility.fits += 1
        utility.record_failure(err)
        return PointStats.from_samples(n, np.zeros(0, np.int64), np.zeros(0), samples=1, evaluations=1, failures=1)
    utility.fits += 1
    truth = utility.y_train[out_of_bag]
    # classification: 1 if the out-of-bag prediction is right; regression: minus the squared error
    score = (predicted == truth).astype(float) if classifier else -((predicted - truth) ** 2)
    return PointStats.from_samples(n, out_of_bag, score, samples=1, evaluations=1)


def _oob_batch(utility: Utility, model, max_samples: float, rngs: list[np.random.Generator]) -> list[PointStats]:
    from sklearn.base import is_classifier

    classifier = utility.is_classifier if model is None else is_classifier(model)
    bag_size = max(1, int(round(max_samples * utility.n)))
    return [_one_bag(utility, model, classifier, bag_size, rng) for rng in rngs]


def data_oob(utility: Utility, stopping: Stopping | None = None, *, model=None, max_samples: float = 1.0,
             batch_size: int = 16, n_jobs: int = 1, seed: int | None = None, progress=False) -> ValuationResult:
    """Data-OOB values of the training rows of `utility` (its test set is not used).

    stopping: when to stop bagging (default MaxSamples(200) bags).
    model: the bagged estimator; default the utility's model (the paper bags decision trees).
    max_samples: bootstrap size as a fraction of n.
    progress: True for a rich progress display, or a callable given the running PointStats per batch.
    Each bag and its fit's `random_state` (where the estimator leaves it unset) come from the bag's own
    generator, so a seed gives the same values for any n_jobs and batch_size. The model is first fitted on
    all rows: if that fails, FitFailureError is raised before any bag.
    """
    if not isinstance(utility, Utility):
        raise ConfigError(f"data_oob needs a Utility (model + training data), got {type(utility).__name__}")
    if not 0 < max_samples <= 1:
        raise ConfigError(f"max_samples must be in (0, 1], got {max_samples}")
    stopping = stopping or MaxSamples(200)
    try:
        utility.fit_subset(np.arange(utility.n), model, random_state=0)
    except Exception as err:
        utility.record_failure(err, full=True)
    batch_fn = functools.partial(_oob_batch, utility, model, max_samples)
    with sampling_progress(progress, "data_oob") as on_batch:
        stats, info = run_batches(batch_fn, utility.n, stopping, batch_size=batch_size, n_jobs=n_jobs,
                                  entropy=run_entropy(seed), progress=on_batch)
    report_failures(utility, stats.failures, stats.evaluations, "data_oob")
    params = {"max_samples": max_samples, "seed": seed, "n_jobs": n_jobs, "bags": stats.samples,
              "model": type(model or utility.model).__name__, **info}
    return ValuationResult(stats.values, stats.stderr, stats.counts, "data_oob", params,
                           utility_evaluations=stats.evaluations, fit_failures=stats.failures)
