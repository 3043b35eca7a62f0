"""FrugalGPT cascades: fit a scorer, find the budgeted frontier, evaluate a plan on new responses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.routing.optimizer import Frontier, optimize_cascade, simulate_cascade
from alloyml.routing.plan import CascadePlan, PointPlan, StagePlan
from alloyml.routing.responses import LoggedResponses
from alloyml.routing.scorer import (
    TextScorer,
    fit_scorer,
    out_of_fold_scores,
    score_responses,
    scorer_from_dict,
    scorer_to_dict,
)


@dataclass(frozen=True)
class CascadeEvaluation:
    """How a cascade did on logged responses.

    stage: [Q] 0-based stage each query stopped at; correct: [Q] bool; cost: [Q] float;
    stage_share: [S] fraction of queries stopping at each stage.
    """

    accuracy: float
    mean_cost: float
    stage: np.ndarray
    correct: np.ndarray
    cost: np.ndarray
    stage_share: np.ndarray


class FrugalCascade:
    """A budgeted cascade over the models of logged responses.

    budget: max mean cost per query on the training responses. max_length: longest chain.
    n_thresholds: candidate thresholds per stage (None: every distinct score). scorer: an unfitted
    scorer (`TextScorer(classifier)` for any sklearn classifier, `CallableScorer` for a model);
    default `TextScorer()`. folds: the optimiser sees out-of-fold scores from this many folds.

    Learned: scorer_ (fitted on all responses), train_scores_ [Q, M], frontier_, chosen_, plan_.
    """

    def __init__(self, budget: float, max_length: int = 3, n_thresholds: int | None = 32, scorer=None,
                 folds: int = 5, seed: int = 0):
        self.budget = budget
        self.max_length = max_length
        self.n_thresholds = n_thresholds
        self.scorer = scorer
        self.folds = folds
        self.seed = seed

    def fit(self, responses: LoggedResponses) -> FrugalCascade:
        if not np.isfinite(self.budget) or self.budget <= 0:
            raise InvalidInputError(f"budget must be a positive mean cost per query, got {self.budget!r}")
        scorer = self.scorer if self.scorer is not None else TextScorer()
        self.train_scores_ = out_of_fold_scores(scorer, responses, self.folds, self.seed)
        self.frontier_ = optimize_cascade(
            self.train_scores_, responses.correct, responses.cost, self.max_length, self.n_thresholds
        )
        self.chosen_ = self.frontier_.best_under(self.budget)
        from sklearn.base import clone

        self.scorer_ = fit_scorer(clone(scorer, safe=False), responses)
        self.plan_ = plan_from_frontier(self.frontier_, responses.models, self.chosen_, self.budget, self.scorer_)
        return self

    def evaluate(self, responses: LoggedResponses) -> CascadeEvaluation:
        return evaluate_plan(self.plan_, responses, scorer=self.scorer_)


def plan_from_frontier(frontier: Frontier, models, chosen: int, budget: float | None, scorer=None) -> CascadePlan:
    """The JSON plan of a frontier; the scorer is embedded when it can be saved as JSON."""
    points = []
    for p in frontier.points:
        stages = [StagePlan(model=models[c], threshold=t) for c, t in zip(p.chain, [*p.thresholds, None], strict=True)]
        points.append(PointPlan(stages=stages, accuracy=p.accuracy, mean_cost=p.mean_cost))
    return CascadePlan(
        models=list(models), frontier=points, chosen=chosen, budget=budget, scorer=scorer_to_dict(scorer)
    )


def plan_scorer(plan: CascadePlan, scorer=None):
    """The scorer to run a plan with: the one given, else the plan's embedded one."""
    if scorer is not None:
        return scorer
    if plan.scorer is None:
        raise InvalidInputError("this plan has no saved scorer; pass the fitted scorer")
    return scorer_from_dict(plan.scorer)


def evaluate_plan(plan: CascadePlan, responses: LoggedResponses, scorer=None, point: int | None = None
                  ) -> CascadeEvaluation:
    """Accuracy and cost of frontier point `point` (default: the chosen one) on logged responses."""
    chosen = plan.frontier[plan.chosen if point is None else point]
    chain = [responses.model_index(name) for name in chosen.models]
    scores = score_responses(plan_scorer(plan, scorer), responses)
    stage, correct, cost = simulate_cascade(scores, responses.correct, responses.cost, chain, chosen.thresholds)
    share = np.bincount(stage, minlength=len(chain)) / len(stage)
    return CascadeEvaluation(float(correct.mean()), float(cost.mean()), stage, correct, cost, share)
