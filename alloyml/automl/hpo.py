"""Hyperparameter search on Ray Tune: Optuna TPE (or random) search, ASHA early stopping, and
PriorBand-style user priors.

An objective is any picklable `objective(config, report)` that trains step by step and calls
`report({"score": ..., "cost": ...})` after each step (`cost` cumulative, in the objective's unit);
ASHA stops trials whose early steps score poorly. `alloyml.automl.objectives` has them for scikit-learn
pipelines and for alloyml language-model training.

Priors: a fraction `prior_fraction` of the trials is drawn from the user's `Prior`s and evaluated
first (Tune's `points_to_evaluate`), so TPE starts from the user's beliefs and can still leave them.
Tune's own files go under `$ALLOYML_HOME/tune/` (or `storage_path`), never `~/ray_results`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alloyml.automl.space import Prior, parse_space, sample_prior, to_tune
from alloyml.errors import InvalidInputError
from alloyml.home import alloyml_home
from alloyml.trials import SearchResult, TrialCallback, TrialRecord

Objective = Callable[[dict[str, Any], Callable[[dict[str, float]], None]], None]
SEARCHERS = ("optuna", "random")


def _run_trial(config, objective):
    from ray import tune

    objective(config, lambda metrics: tune.report(dict(metrics)))


# Keys Tune adds to every result; everything else numeric came from the objective's report().
_TUNE_KEYS = {
    "training_iteration",
    "time_total_s",
    "time_this_iter_s",
    "timestamp",
    "time_since_restore",
    "iterations_since_restore",
    "pid",
    "done",
    "cost",
}


def _record_callback(on_trial: TrialCallback | None, records: list[TrialRecord], max_iterations: int):
    from ray.tune import Callback

    class _Recorder(Callback):
        """Runs in the driver: turns each finished Tune trial into a TrialRecord."""

        def _finish(self, trial, status):
            last = dict(trial.last_result or {})
            steps = int(last.get("training_iteration", 0))
            if status == "completed" and steps < max_iterations:
                status = "stopped_early"
            record = TrialRecord(
                trial_id=trial.trial_id,
                config=dict(trial.config),
                metrics={
                    k: float(v)
                    for k, v in last.items()
                    if k not in _TUNE_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
                },
                cost=float(last.get("cost", 0.0)),
                seconds=float(last.get("time_total_s", 0.0)),
                status=status,
                extra={"iterations": steps},
            )
            records.append(record)
            if on_trial is not None:
                on_trial(record)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, "completed")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, "error")

        def __reduce__(self):
            # Tune pickles its run config, callbacks included, into the experiment folder. `on_trial` may hold
            # what only this driver can use (a store connection, a console): the saved copy records nothing.
            return Callback, ()

    return _Recorder()


def hyperparameter_search(
    objective: Objective,
    space: dict,
    *,
    max_iterations: int,
    metric: str = "score",
    mode: str = "max",
    num_samples: int = 8,
    searcher: str = "optuna",
    asha: bool = True,
    grace_period: int = 1,
    reduction_factor: int = 2,
    priors: dict[str, Prior] | None = None,
    prior_fraction: float = 0.25,
    max_concurrent: int = 2,
    seed: int = 0,
    storage_path: str | Path | None = None,
    on_trial: TrialCallback | None = None,
) -> SearchResult:
    """Run `num_samples` trials of `objective` over `space` on Ray Tune and return every trial.

    `max_iterations` is the number of `report` calls a full trial makes (ASHA's `max_t`).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from alloyml.raycluster import ensure_ray

    parsed = parse_space(space)
    if mode not in ("max", "min"):
        raise InvalidInputError(f"mode must be 'max' or 'min', got {mode!r}")
    if searcher not in SEARCHERS:
        raise InvalidInputError(f"unknown searcher {searcher!r}; known: {list(SEARCHERS)}")
    if num_samples < 1 or max_iterations < 1:
        raise InvalidInputError("num_samples and max_iterations must be >= 1")
    if not 0.0 <= prior_fraction <= 1.0:
        raise InvalidInputError(f"prior_fraction must be in [0, 1], got {prior_fraction}")
    n_prior = round(num_samples * prior_fraction) if priors else 0
    points = sample_prior(parsed, priors or {}, n_prior, seed=seed)

    if searcher == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(points_to_evaluate=points or None, sampler=TPESampler(seed=seed))
    else:
        search = BasicVariantGenerator(points_to_evaluate=points or None, random_state=seed)
    scheduler = (
        ASHAScheduler(max_t=max_iterations, grace_period=grace_period, reduction_factor=reduction_factor)
        if asha
        else FIFOScheduler()
    )
    start = time.perf_counter()
    root = Path(storage_path) if storage_path else alloyml_home() / "tune"
    root.mkdir(parents=True, exist_ok=True)
    name = f"search-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    records: list[TrialRecord] = []

    ensure_ray()
    tuner = tune.Tuner(
        tune.with_parameters(_run_trial, objective=objective),
        param_space={k: to_tune(p) for k, p in parsed.items()},
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            num_samples=num_samples,
            search_alg=search,
            scheduler=scheduler,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # a fresh worker per trial costs seconds; objectives keep no state
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(root.resolve()),
            callbacks=[_record_callback(on_trial, records, max_iterations)],
            verbose=0,
        ),
    )
    tuner.fit()
    full = [t for t in records if t.status == "completed" and metric in t.metrics] or [
        t for t in records if metric in t.metrics
    ]
    if not full:
        raise InvalidInputError(f"no trial reported metric {metric!r}; check the objective's report() calls")
    sign = 1.0 if mode == "max" else -1.0
    best = max(full, key=lambda t: sign * t.metrics[metric])
    return SearchResult(records, best.config, best.metrics[metric], metric=metric, mode=mode,
                        seconds=time.perf_counter() - start, storage_path=str(root / name))
