"""A learned router (RouteLLM-style): pick the model before calling any.

From the query alone, a classifier predicts each model's chance of answering correctly (the cascade's
`TextScorer` with the answer left empty, so the model-crossed features learn per-model strengths). The
router calls the cheapest model whose predicted chance is >= `threshold_`, or the most promising model
when none is. The threshold is calibrated on out-of-fold predictions: the most accurate one whose mean
cost on the training queries is within the budget, among `n_thresholds` quantiles of the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.routing.responses import LoggedResponses
from alloyml.routing.scorer import TextScorer, fit_scorer, out_of_fold_scores, score_responses


@dataclass(frozen=True)
class RouterEvaluation:
    """choice: [Q] model index called per query; correct, cost: [Q]."""

    accuracy: float
    mean_cost: float
    choice: np.ndarray
    correct: np.ndarray
    cost: np.ndarray


def _query_only(responses: LoggedResponses) -> LoggedResponses:
    return replace(responses, answers=np.full(responses.answers.shape, "", dtype=object))


def route(proba: np.ndarray, by_cost: np.ndarray, threshold: float) -> np.ndarray:
    """[Q] model index: the first model in `by_cost` order with proba >= threshold, else the argmax.

    proba: [Q, M] predicted success; by_cost: [M] model indices from cheapest to dearest.
    """
    ok = proba[:, by_cost] >= threshold
    first = by_cost[np.argmax(ok, axis=1)]
    return np.where(ok.any(axis=1), first, np.argmax(proba, axis=1))


class LearnedRouter:
    """budget: max mean cost per query on the training responses. classifier: any sklearn classifier
    with predict_proba over hashed query features (default: logistic regression). folds: calibration
    uses out-of-fold predictions; n_thresholds: candidate thresholds tried.

    Learned: scorer_, by_cost_ [M] (models from cheapest to dearest by mean cost), threshold_, models_.
    """

    def __init__(self, budget: float, classifier=None, n_features: int = 2**12, n_thresholds: int = 256,
                 folds: int = 5, seed: int = 0):
        self.budget = budget
        self.n_thresholds = n_thresholds
        self.classifier = classifier
        self.n_features = n_features
        self.folds = folds
        self.seed = seed

    def fit(self, responses: LoggedResponses) -> LearnedRouter:
        if not np.isfinite(self.budget) or self.budget <= 0:
            raise InvalidInputError(f"budget must be a positive mean cost per query, got {self.budget!r}")
        blank = _query_only(responses)
        scorer = TextScorer(self.classifier, self.n_features)
        proba = out_of_fold_scores(scorer, blank, self.folds, self.seed)  # [Q, M]
        self.models_ = responses.models
        self.by_cost_ = np.argsort(responses.cost.mean(axis=0), kind="stable")
        rows = np.arange(responses.n_queries)
        best = None
        candidates = np.unique(np.quantile(proba, np.linspace(0, 1, self.n_thresholds), method="lower"))
        for threshold in np.concatenate([candidates, [np.inf]]):
            choice = route(proba, self.by_cost_, threshold)
            cost = responses.cost[rows, choice].mean()
            accuracy = responses.correct[rows, choice].mean()
            if cost <= self.budget and (best is None or accuracy > best[0]):
                best = (accuracy, threshold)
        if best is None:
            raise InvalidInputError(
                f"budget {self.budget!r} is below the cheapest routing's mean cost "
                f"{responses.cost[:, self.by_cost_[0]].mean():.6g}"
            )
        self.threshold_ = float(best[1])
        self.scorer_ = fit_scorer(scorer, blank)
        return self

    def predict_proba(self, queries) -> np.ndarray:
        """[N, M] predicted chance that each model answers each query correctly."""
        queries = np.asarray(list(queries), dtype=object)
        m = len(self.models_)
        models = np.tile(np.asarray(self.models_, dtype=object), len(queries))
        flat = self.scorer_.predict_proba(np.repeat(queries, m), [""] * (len(queries) * m), models)
        return flat.reshape(len(queries), m)

    def predict(self, queries) -> np.ndarray:
        """[N] index (into models_) of the model to call for each query."""
        return route(self.predict_proba(queries), self.by_cost_, self.threshold_)

    def evaluate(self, responses: LoggedResponses) -> RouterEvaluation:
        if tuple(responses.models) != tuple(self.models_):
            raise InvalidInputError(f"responses have models {responses.models}, the router {self.models_}")
        proba = score_responses(self.scorer_, _query_only(responses))
        choice = route(proba, self.by_cost_, self.threshold_)
        rows = np.arange(responses.n_queries)
        correct, cost = responses.correct[rows, choice], responses.cost[rows, choice]
        return RouterEvaluation(float(correct.mean()), float(cost.mean()), choice, correct, cost)
