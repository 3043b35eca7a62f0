"""Objectives for `hyperparameter_search`: `objective(config, report)` trains step by step and calls
`report(metrics)` after each step, with a cumulative `cost`; ASHA stops trials whose early steps look bad.

- `SklearnObjective`: a scikit-learn estimator or pipeline on a growing share of the training split.
- `CrossValObjective`: a scikit-learn estimator scored by k-fold cross-validation, one fold per step.
- `LMTrainingObjective`: an alloyml `LinearLM` trained with `alloyml.models.Trainer` on one of the
  models' offline tasks, scored by held-out loss.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import numpy as np

from alloyml.errors import InvalidInputError


class SklearnObjective:
    """Score `estimator.set_params(**config)` on a held-out split, on a growing share of the training data.

    `X: [N, D]`, `y: [N]`. Step k of `steps` fits a fresh clone on the first ceil(k/steps) of the
    (shuffled) training split; `cost` is the number of training rows fitted so far.
    """

    def __init__(self, estimator, X, y, *, scoring=None, steps: int = 4, val_fraction: float = 0.25, seed: int = 0):
        self.estimator = estimator
        self.X = X
        self.y = y
        self.scoring = scoring
        self.steps = steps
        self.val_fraction = val_fraction
        self.seed = seed

    def split(self):
        """(X_train, y_train, X_val, y_val): a fixed shuffled split."""
        X, y = np.asarray(self.X), np.asarray(self.y)
        if X.ndim != 2 or len(X) != len(y):
            raise InvalidInputError(f"X must be [N, D] and y [N], got {X.shape} and {y.shape}")
        order = np.random.default_rng(self.seed).permutation(len(X))
        n_val = max(1, int(round(len(X) * self.val_fraction)))
        val, train = order[:n_val], order[n_val:]
        return X[train], y[train], X[val], y[val]

    def step_rows(self, n_train: int) -> list[int]:
        return [math.ceil(n_train * k / self.steps) for k in range(1, self.steps + 1)]

    def __call__(self, config: dict[str, Any], report) -> None:
        X_tr, y_tr, X_val, y_val = self.split()
        cost = 0
        for rows in self.step_rows(len(X_tr)):
            cost += rows
            score = _fit_score(self.estimator, config, self.scoring, X_tr[:rows], y_tr[:rows], X_val, y_val)
            report({"score": score, "cost": float(cost)})


class CrossValObjective:
    """Score `estimator.set_params(**config)` by k-fold cross-validation, one fold per step.

    `X: [N, D]`, `y: [N]`. The folds are `cross_val_score`'s for `cv=k` (stratified for classifiers, not
    shuffled); step i fits fold i and reports the mean score of folds 1..i, so the last report equals
    `cross_val_score(estimator.set_params(**config), X, y, cv=k, scoring=scoring).mean()` and ASHA can stop a
    trial after its first folds. `cost` is the number of training rows fitted so far.
    """

    def __init__(self, estimator, X, y, *, scoring=None, cv: int = 5):
        self.estimator = estimator
        self.X = X
        self.y = y
        self.scoring = scoring
        self.cv = cv

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train indices, test indices) per fold."""
        from sklearn.base import is_classifier
        from sklearn.model_selection import check_cv

        X, y = np.asarray(self.X), np.asarray(self.y)
        if X.ndim != 2 or len(X) != len(y):
            raise InvalidInputError(f"X must be [N, D] and y [N], got {X.shape} and {y.shape}")
        if not isinstance(self.cv, int) or self.cv < 2:
            raise InvalidInputError(f"cv must be an integer >= 2 (the number of folds), got {self.cv!r}")
        return list(check_cv(self.cv, y, classifier=is_classifier(self.estimator)).split(X, y))

    def __call__(self, config: dict[str, Any], report) -> None:
        X, y = np.asarray(self.X), np.asarray(self.y)
        scores, cost = [], 0
        for train, test in self.folds():
            cost += len(train)
            scores.append(_fit_score(self.estimator, config, self.scoring, X[train], y[train], X[test], y[test]))
            report({"score": float(np.mean(scores)), "cost": float(cost)})


def _fit_score(estimator, config, scoring, X_train, y_train, X_test, y_test) -> float:
    """A fresh clone of `estimator` with `config`, fitted on the training rows and scored on the test rows."""
    from sklearn.base import clone
    from sklearn.metrics import check_scoring

    model = clone(estimator).set_params(**config).fit(X_train, y_train)
    return float(check_scoring(model, scoring)(model, X_test, y_test))


class LMTrainingObjective:
    """Train a fresh `LinearLM` per trial; report the held-out loss every `report_every` optimiser steps.

    Config keys that are `ModelConfig` fields (`d_model`, `mixer`, ...) shape the model, on top of
    `base_model`; the others go to `Trainer` (`lr`, `weight_decay`, `warmup_steps`, ...). Reports
    `{"loss", "train_loss", "cost"}` with `cost` = training tokens seen; search it with `mode="min"`,
    `metric="loss"` and `max_iterations = steps // report_every`.
    """

    def __init__(
        self,
        task: str = "mqar",
        *,
        task_kwargs: dict | None = None,
        base_model: dict | None = None,
        steps: int = 40,
        report_every: int = 10,
        batch_size: int = 16,
        eval_batches: int = 2,
        seed: int = 0,
    ):
        self.task = task
        self.task_kwargs = task_kwargs
        self.base_model = base_model
        self.steps = steps
        self.report_every = report_every
        self.batch_size = batch_size
        self.eval_batches = eval_batches
        self.seed = seed

    def split_config(self, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(ModelConfig fields, Trainer arguments); an unknown key raises before any training."""
        from alloyml.models import ModelConfig, Trainer

        model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
        trainer_keys = set(inspect.signature(Trainer.__init__).parameters) - {"self", "steps", "callback"}
        unknown = set(config) - model_keys - trainer_keys
        if unknown:
            raise InvalidInputError(
                f"config keys {sorted(unknown)} are neither ModelConfig fields nor Trainer arguments"
            )
        model = {**(self.base_model or {}), **{k: v for k, v in config.items() if k in model_keys}}
        return model, {k: v for k, v in config.items() if k in trainer_keys}

    def __call__(self, config: dict[str, Any], report) -> None:
        import torch

        from alloyml.models import LinearLM, ModelConfig, Trainer, batches, make_task

        model_fields, trainer_args = self.split_config(config)
        task = make_task(self.task, **(self.task_kwargs or {}))
        model_fields.setdefault("vocab_size", task.vocab_size)
        torch.manual_seed(self.seed)
        model = LinearLM(ModelConfig(**model_fields))
        train = batches(task, self.batch_size, seed=self.seed)
        held_out = batches(task, self.batch_size, seed=self.seed + 1)
        tokens_per_step = int(train(0)[0].numel())

        def held_out_loss() -> float:
            model.eval()
            with torch.no_grad():
                losses = []
                for i in range(self.eval_batches):
                    inputs, targets = held_out(i)
                    losses.append(model(inputs, targets=targets).loss.item())
            model.train()
            return float(np.mean(losses))

        def on_step(metrics) -> None:
            if metrics.step % self.report_every == 0 or metrics.step == self.steps:
                report(
                    {
                        "loss": held_out_loss(),
                        "train_loss": metrics.loss,
                        "cost": float(metrics.step * tokens_per_step),
                    }
                )

        Trainer(steps=self.steps, callback=on_step, **trainer_args).fit(model, train)
