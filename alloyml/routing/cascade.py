"""FrugalGPT cascades: fit a scorer, find the budgeted frontier, evaluate a plan on new responses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.routing.estimator import BaseEstimator, require_fitted
from alloyml.routing.optimizer import Frontier, optimize_cascade, simulate_cascade, within_budget
from alloyml.routing.plan import CascadePlan, PointPlan, StagePlan
from alloyml.routing.responses import LoggedResponses
from alloyml.routing.scorer import (
    TextScorer,
    fit_fold_scorer,
    score_responses,
    scorer_from_dict,
    scorer_to_dict,
)

# How many standard errors of its training mean cost a plan keeps below the budget by default: the mean
# cost on new traffic differs from the training one by sampling noise alone, and picking the dearest
# point that fits selects points whose training cost came out low. 1.645 is a one-sided 95% bound.
COST_Z = 1.645


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


class FrugalCascade(BaseEstimator):
    """A budgeted cascade over the models of logged responses.

    budget: max mean cost per query on new traffic. max_length: longest chain. n_thresholds: candidate
    thresholds per stage (None: every distinct score). scorer: an unfitted scorer (`TextScorer(classifier)`
    for any sklearn classifier, `CallableScorer` for a model); default `TextScorer()`. folds: the
    scorer is cross-fitted on this many folds; the optimiser sees the out-of-fold scores and the plan
    serves the fold ensemble that produced them (`FoldScorer`), so served scores are distributed like
    the ones the thresholds were chosen on. cost_z: the chosen point is the most accurate one whose
    training mean cost plus `cost_z` standard errors fits the budget (0: the plain training mean).

    Learned: scorer_ (the `FoldScorer`), train_scores_ [Q, M], frontier_, chosen_, plan_.
    """

    def __init__(self, budget: float, max_length: int = 3, n_thresholds: int | None = 32, scorer=None,
                 folds: int = 5, seed: int = 0, cost_z: float = COST_Z):
        self.budget = budget
        self.max_length = max_length
        self.n_thresholds = n_thresholds
        self.scorer = scorer
        self.folds = folds
        self.seed = seed
        self.cost_z = cost_z

    def fit(self, responses: LoggedResponses) -> FrugalCascade:
        if not np.isfinite(self.budget) or self.budget <= 0:
            raise InvalidInputError(f"budget must be a positive mean cost per query, got {self.budget!r}")
        if not np.isfinite(self.cost_z) or self.cost_z < 0:
            raise InvalidInputError(f"cost_z must be a finite number >= 0, got {self.cost_z!r}")
        scorer = self.scorer if self.scorer is not None else TextScorer()
        self.train_scores_, self.scorer_ = fit_fold_scorer(scorer, responses, self.folds, self.seed)
        self.frontier_ = optimize_cascade(
            self.train_scores_, responses.correct, responses.cost, self.max_length, self.n_thresholds
        )
        cost_se = point_cost_se(self.frontier_, self.train_scores_, responses)
        self.chosen_ = best_within_budget(self.frontier_, cost_se, self.budget, self.cost_z)
        self.plan_ = plan_from_frontier(self.frontier_, responses.models, self.chosen_, self.budget, self.scorer_,
                                        cost_se)
        return self

    def predict(self, responses: LoggedResponses) -> np.ndarray:
        """[Q] index into `responses.models` of the model whose answer the cascade returns per query."""
        require_fitted(self, "plan_")
        chain = np.array([responses.model_index(m) for m in self.plan_.point.models])
        return chain[self.evaluate(responses).stage]

    def evaluate(self, responses: LoggedResponses) -> CascadeEvaluation:
        require_fitted(self, "plan_")
        return evaluate_plan(self.plan_, responses, scorer=self.scorer_)


def point_cost_se(frontier: Frontier, scores, responses: LoggedResponses) -> np.ndarray:
    """[P] standard error of each frontier point's mean cost per query on the training responses."""
    out = np.empty(len(frontier.points))
    for i, p in enumerate(frontier.points):
        _, _, paid = simulate_cascade(scores, responses.correct, responses.cost, p.chain, p.thresholds)
        out[i] = paid.std(ddof=1) / np.sqrt(len(paid)) if len(paid) > 1 else 0.0
    return out


def best_within_budget(frontier: Frontier, cost_se: np.ndarray, budget: float, cost_z: float) -> int:
    """The most accurate frontier point whose mean cost + cost_z standard errors is within the budget
    (up to the rounding `Frontier.best_under` allows)."""
    bound = frontier.cost + cost_z * cost_se
    fits = np.flatnonzero(within_budget(bound, budget))
    if len(fits) == 0:
        raise InvalidInputError(
            f"budget {budget!r} is below the cheapest cascade's mean cost {frontier.cost[0]:.6g} plus "
            f"{cost_z:g} standard errors ({bound[0]:.6g})"
        )
    return int(fits.max())  # accuracy increases along the frontier


def plan_from_frontier(frontier: Frontier, models, chosen: int, budget: float | None, scorer=None,
                       cost_se=None) -> CascadePlan:
    """The JSON plan of a frontier; the scorer is embedded when it can be saved as JSON."""
    points = []
    for i, p in enumerate(frontier.points):
        stages = [StagePlan(model=models[c], threshold=t) for c, t in zip(p.chain, [*p.thresholds, None], strict=True)]
        se = None if cost_se is None else float(cost_se[i])
        points.append(PointPlan(stages=stages, accuracy=p.accuracy, mean_cost=p.mean_cost, cost_se=se))
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
