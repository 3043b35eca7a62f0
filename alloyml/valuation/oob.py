"""Data-OOB (Kwon & Zou 2023): the value of a training row is how well the bagged models that did not
see it predict it — cheap (one fit per bag, no test set) and a strong detector of mislabelled rows.
"""

from __future__ import annotations

import functools

import numpy as np

from alloyml.errors import ConfigError
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_batches
from alloyml.valuation.stats import PointStats
from alloyml.valuation.stopping import MaxSamples, Stopping
from alloyml.valuation.utility import Utility


def _oob_batch(utility: Utility, model, max_samples: float, rng: np.random.Generator,
               n_bags: int) -> PointStats:
    from sklearn.base import is_classifier
    from sklearn.utils import _safe_indexing

    n = utility.n
    classifier = utility.is_classifier if model is None else is_classifier(model)
    bag_size = max(1, int(round(max_samples * n)))
    points, scores = [], []
    for _ in range(n_bags):
        bag = rng.integers(0, n, size=bag_size)
        out_of_bag = np.setdiff1d(np.arange(n), bag)
        if out_of_bag.size == 0:
            continue
        estimator = utility.fit_subset(bag, model)
        predicted = estimator.predict(_safe_indexing(utility.x_train, out_of_bag))
        truth = utility.y_train[out_of_bag]
        # classification: 1 if the out-of-bag prediction is right; regression: minus the squared error
        score = (predicted == truth).astype(float) if classifier else -((predicted - truth) ** 2)
        points.append(out_of_bag)
        scores.append(score)
    return PointStats.from_samples(n, np.concatenate(points or [np.zeros(0, np.int64)]),
                                   np.concatenate(scores or [np.zeros(0)]), samples=n_bags,
                                   evaluations=len(points))


def data_oob(utility: Utility, stopping: Stopping | None = None, *, model=None, max_samples: float = 1.0,
             batch_size: int = 16, n_jobs: int = 1, seed: int | None = None) -> ValuationResult:
    """Data-OOB values of the training rows of `utility` (its test set is not used).

    stopping: when to stop bagging (default MaxSamples(200) bags).
    model: the bagged estimator; default the utility's model (the paper bags decision trees).
    max_samples: bootstrap size as a fraction of n.
    """
    if not isinstance(utility, Utility):
        raise ConfigError(f"data_oob needs a Utility (model + training data), got {type(utility).__name__}")
    if not 0 < max_samples <= 1:
        raise ConfigError(f"max_samples must be in (0, 1], got {max_samples}")
    stopping = stopping or MaxSamples(200)
    batch_fn = functools.partial(_oob_batch, utility, model, max_samples)
    stats, info = run_batches(batch_fn, utility.n, stopping, batch_size=batch_size, n_jobs=n_jobs, seed=seed)
    params = {"max_samples": max_samples, "seed": seed, "n_jobs": n_jobs, "bags": stats.samples,
              "model": type(model or utility.model).__name__, **info}
    return ValuationResult(stats.values, stats.stderr, stats.counts, "data_oob", params,
                           utility_evaluations=stats.evaluations)
