"""Hyperparameter search on Ray Tune: Optuna TPE (or random) search, ASHA early stopping, and
warm-start points drawn from user priors.

An objective is any picklable `objective(config, report)` that trains step by step and calls
`report({"score": ..., "cost": ...})` after each step (`cost` cumulative, in the objective's unit);
ASHA stops trials whose early steps score poorly. `alloyml.automl.objectives` has them for scikit-learn
pipelines and for alloyml language-model training.

TPE starts with `tpe_startup_trials(num_samples)` random trials (Optuna's default of 10 would make a small
search purely random). Trials ASHA stops early are told to Optuna as pruned, not as finished with their
partial score. Warm start: a fraction `prior_fraction` of the trials is drawn from the user's `Prior`s and
evaluated first (Tune's `points_to_evaluate`, counted among TPE's startup trials), so the search starts
from the user's beliefs and can still leave them. This is not PriorBand: the priors shape only those
first points, not the sampling at every rung.

Reproducible by `seed` with `max_concurrent=1`; with more, which trials have finished when TPE suggests the
next depends on timing (random search stays reproducible).
Tune's own files go under `$ALLOYML_HOME/tune/` (or `storage_path`), never `~/ray_results`.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alloyml.automl.space import Prior, parse_space, sample_prior, to_tune
from alloyml.errors import InvalidInputError, TrialsFailedError
from alloyml.home import alloyml_home
from alloyml.trials import SearchResult, TrialCallback, TrialRecord

Objective = Callable[[dict[str, Any], Callable[[dict[str, float]], None]], None]
SEARCHERS = ("optuna", "random")


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: a third of the budget, 2 to 10."""
    return max(2, min(10, num_samples // 3))


def warm_start_count(num_samples: int, prior_fraction: float, has_priors: bool) -> int:
    """How many of the trials are drawn from the priors and evaluated first."""
    return round(num_samples * prior_fraction) if has_priors else 0


def describe_search(searcher: str, num_samples: int, n_warm: int) -> str:
    """What the search will do with its trials, for a user to read before it runs."""
    warm = f"{n_warm} warm-start from the priors, " if n_warm else ""
    if searcher == "optuna":
        startup = tpe_startup_trials(num_samples)
        guided = max(0, num_samples - max(startup, n_warm))
        return (f"{num_samples} trials: {warm}{max(0, startup - n_warm)} random startup, "
                f"{guided} guided by TPE")
    return f"{num_samples} trials: {warm}{num_samples - n_warm} random"


def _error_line(text: str | None) -> str | None:
    """The exception line of a trial's traceback (its last non-empty line)."""
    if not text:
        return None
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else None


def _trial_error_text(trial) -> str | None:
    """The traceback Tune wrote for a failed trial (a text file beside its results, when the callback runs)."""
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text(errors="replace")
    return trial.get_error()


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
            if status == "error":
                record = dataclasses.replace(record, error=_error_line(_trial_error_text(trial)))
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
    previous: Sequence[TrialRecord] = (),
) -> SearchResult:
    """Run `num_samples` trials of `objective` over `space` on Ray Tune and return every trial.

    `max_iterations` is the number of `report` calls a full trial makes (ASHA's `max_t`). `previous`: the
    trials of an interrupted search over the same space (from the store); they count towards
    `num_samples`, are not run again, are returned first, and TPE learns from them. `on_trial` is called
    for the new trials only.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from alloyml.automl.searchers import build_searcher

    parsed = parse_space(space)
    if mode not in ("max", "min"):
        raise InvalidInputError(f"mode must be 'max' or 'min', got {mode!r}")
    if searcher not in SEARCHERS:
        raise InvalidInputError(f"unknown searcher {searcher!r}; known: {list(SEARCHERS)}")
    if num_samples < 1 or max_iterations < 1:
        raise InvalidInputError("num_samples and max_iterations must be >= 1")
    if not 0.0 <= prior_fraction <= 1.0:
        raise InvalidInputError(f"prior_fraction must be in [0, 1], got {prior_fraction}")
    points = sample_prior(parsed, priors or {}, warm_start_count(num_samples, prior_fraction, bool(priors)), seed=seed)
    previous = list(previous)
    for t in previous:
        if set(t.config) != set(parsed):
            raise InvalidInputError(f"previous trial {t.trial_id} has parameters {sorted(t.config)}; the space has "
                                    f"{sorted(parsed)}")
    done = [t.config for t in previous]
    points = [p for p in points if p not in done]  # the same seed draws the same warm-start points
    evaluated = [(t.config, t.metrics.get(metric), t.status) for t in previous]
    search = build_searcher(searcher, num_samples=num_samples, max_iterations=max_iterations, points=points,
                            seed=seed, evaluated=evaluated)
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
    remaining = num_samples - len(previous)
    if remaining > 0:
        _fit(tune, objective, parsed, metric, mode, remaining, search, scheduler, max_concurrent, root, name,
             _record_callback(on_trial, records, max_iterations))
    records = previous + records
    full = [t for t in records if t.status == "completed" and metric in t.metrics] or [
        t for t in records if metric in t.metrics
    ]
    if not full:
        raise _no_result_error(records, metric)
    sign = 1.0 if mode == "max" else -1.0
    best = max(full, key=lambda t: sign * t.metrics[metric])
    return SearchResult(records, best.config, best.metrics[metric], metric=metric, mode=mode,
                        seconds=time.perf_counter() - start, storage_path=str(root / name) if remaining > 0 else None)


def _fit(tune, objective, parsed, metric, mode, num_samples, search, scheduler, max_concurrent, root, name,
         recorder) -> None:
    from alloyml.raycluster import ensure_ray

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
            callbacks=[recorder],
            verbose=0,
        ),
    )
    tuner.fit()


def _no_result_error(records: list[TrialRecord], metric: str) -> Exception:
    """Why no trial has a result: the trials' own exceptions when they failed, else the missing metric."""
    errors = [t for t in records if t.status == "error"]
    if errors:
        distinct = list(dict.fromkeys(t.error or "unknown error" for t in errors))
        shown = "; ".join(distinct[:3]) + (f"; and {len(distinct) - 3} more" if len(distinct) > 3 else "")
        return TrialsFailedError(f"{len(errors)} of {len(records)} trials failed and none reported metric "
                                 f"{metric!r}: {shown}")
    return InvalidInputError(f"no trial reported metric {metric!r}; check the objective's report() calls")
