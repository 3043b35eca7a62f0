"""A learned router (RouteLLM-style): pick the model before calling any.

From the query alone, a classifier predicts each model's chance `p_j` of answering correctly (the
cascade's `TextScorer` with the answer left empty, so the model-crossed features learn per-model
strengths), cross-fitted like the cascade's scorer so the served predictions are distributed like the
ones calibration saw. The router calls, per query, the model maximising `p_j - lambda * cost_j`
(cost_j: model j's mean training cost). Calibration tries, on out-of-fold predictions, every
candidate lambda, every single model, and random routing between two models, and keeps the most
accurate policy whose spend fits: a mean cost within the budget (optionally with the cascade's
standard-error margin, `cost_z`), or a share of calls to the dearest model (RouteLLM's knob). A single
model or a random mix is a candidate, so the router does no worse on its training data than any of
them that fits.

`evaluate` also reports RouteLLM's metrics over the dearest (strong) and cheapest (weak) model:
PGR, APGR and the call-performance threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.routing.estimator import BaseEstimator, require_fitted
from alloyml.routing.optimizer import within_budget
from alloyml.routing.responses import LoggedResponses
from alloyml.routing.scorer import TextScorer, fit_fold_scorer, score_responses

# CPT(x): the share of strong-model calls needed to recover x of the weak-to-strong accuracy gap.
CPT_LEVEL = 0.5


@dataclass(frozen=True)
class RouterEvaluation:
    """choice: [Q] model index called per query; correct, cost: [Q].

    strong_share: fraction of queries sent to the dearest model. pgr: performance gap recovered,
    (accuracy - weak) / (strong - weak), NaN when the two are equally accurate. apgr: area under PGR
    against strong_share over the router's lambda sweep; cpt: the smallest strong_share on that sweep
    reaching PGR >= CPT_LEVEL (NaN if none does).
    """

    accuracy: float
    mean_cost: float
    choice: np.ndarray
    correct: np.ndarray
    cost: np.ndarray
    strong_share: float
    pgr: float
    apgr: float
    cpt: float


def _query_only(responses: LoggedResponses) -> LoggedResponses:
    return replace(responses, answers=np.full(responses.answers.shape, "", dtype=object))


def route(proba: np.ndarray, unit_cost: np.ndarray, lam: float) -> np.ndarray:
    """[Q] model index maximising `proba - lam * unit_cost`; ties go to the cheaper model.

    proba: [Q, M] predicted success; unit_cost: [M] cost of calling each model.
    """
    order = np.argsort(unit_cost, kind="stable")  # argmax keeps the first of equal values
    utility = proba[:, order] - lam * unit_cost[order]
    return order[np.argmax(utility, axis=1)]


def _coin(queries, seed: int) -> np.ndarray:
    """[N] a uniform number in [0, 1) per query text: random routing that gives one query one answer."""
    from sklearn.utils import murmurhash3_32

    return np.array([murmurhash3_32(str(q), seed=seed + 1, positive=True) / 2**32 for q in queries])


def candidate_lambdas(proba: np.ndarray, unit_cost: np.ndarray, n: int) -> np.ndarray:
    """0, +inf and `n` quantiles of the per-query break-even lambdas `(p_j - p_i) / (c_j - c_i)` of
    every pair of models with c_j > c_i: between two consecutive break-evens the routing is constant."""
    ratios = []
    for i in range(len(unit_cost)):
        for j in range(len(unit_cost)):
            gap = unit_cost[j] - unit_cost[i]
            if gap > 0:
                r = (proba[:, j] - proba[:, i]) / gap
                ratios.append(r[r > 0])
    ratios = np.concatenate(ratios) if ratios else np.zeros(0)
    inner = np.quantile(ratios, np.linspace(0, 1, n)) if len(ratios) else np.zeros(0)
    return np.unique(np.concatenate([[0.0], inner, [np.inf]]))


@dataclass(frozen=True)
class Policy:
    """kind 'lambda' (lam), 'single' (model), or 'random' (model with probability 1 - share, other with
    probability share)."""

    kind: str
    lam: float = 0.0
    model: int = 0
    other: int = 0
    share: float = 0.0


class LearnedRouter(BaseEstimator):
    """budget: max mean cost per query on new traffic; or strong_share: max fraction of queries sent to
    the dearest model (exactly one of the two). classifier: any sklearn classifier with predict_proba
    over hashed query features (default: logistic regression). n_lambdas: candidate lambdas tried.
    folds: cross-fitting folds. cost_z: standard errors of the training spend kept below the limit;
    0 by default, so that a budget set to one model's cost admits that model, which the router must not
    do worse than (the cascade keeps `cascade.COST_Z`: its spend depends on scores, a model's does not).
    scorer: an unfitted scorer to predict success from the query with, e.g. `EmbeddingScorer()` for a
    sentence-embedding router (default: `TextScorer(classifier, n_features)`).

    Learned: scorer_ (a `FoldScorer`), unit_cost_ [M] (mean training cost per model), policy_,
    train_accuracy_, models_.
    """

    def __init__(self, budget: float | None = None, strong_share: float | None = None, classifier=None,
                 n_features: int = 2**12, n_lambdas: int = 256, folds: int = 5, seed: int = 0,
                 cost_z: float = 0.0, scorer=None):
        self.scorer = scorer
        self.budget = budget
        self.strong_share = strong_share
        self.classifier = classifier
        self.n_features = n_features
        self.n_lambdas = n_lambdas
        self.folds = folds
        self.seed = seed
        self.cost_z = cost_z

    def _check(self) -> None:
        if (self.budget is None) == (self.strong_share is None):
            raise InvalidInputError("give exactly one of budget and strong_share")
        if self.budget is not None and (not np.isfinite(self.budget) or self.budget <= 0):
            raise InvalidInputError(f"budget must be a positive mean cost per query, got {self.budget!r}")
        if self.strong_share is not None and not 0.0 <= self.strong_share <= 1.0:
            raise InvalidInputError(f"strong_share must be in [0, 1], got {self.strong_share!r}")
        if not np.isfinite(self.cost_z) or self.cost_z < 0:
            raise InvalidInputError(f"cost_z must be a finite number >= 0, got {self.cost_z!r}")

    def fit(self, responses: LoggedResponses) -> LearnedRouter:
        self._check()
        blank = _query_only(responses)
        scorer = self.scorer if self.scorer is not None else TextScorer(self.classifier, self.n_features)
        proba, self.scorer_ = fit_fold_scorer(scorer, blank, self.folds, self.seed)  # [Q, M]
        self.models_ = responses.models
        self.unit_cost_ = responses.cost.mean(axis=0)
        coin = _coin(responses.queries, self.seed)
        best = None
        for policy in self._candidates(proba):
            choice = self._choose(policy, proba, coin, self.unit_cost_)
            spend = self._spend(responses, choice)
            bound = spend.mean() + self.cost_z * spend.std(ddof=1) / np.sqrt(len(spend)) if len(spend) > 1 \
                else spend.mean()
            if not within_budget(bound, self._limit()):
                continue
            accuracy = responses.correct[np.arange(len(choice)), choice].mean()
            if best is None or accuracy > best[0]:
                best = (accuracy, policy)
        if best is None:
            cheapest = self._spend(responses, np.full(responses.n_queries, int(np.argmin(self.unit_cost_))))
            raise InvalidInputError(
                f"{'budget' if self.budget is not None else 'strong_share'} {self._limit()!r} is below what "
                f"the cheapest routing spends ({cheapest.mean():.6g}) plus {self.cost_z:g} standard errors"
            )
        self.train_accuracy_, self.policy_ = float(best[0]), best[1]
        return self

    def _limit(self) -> float:
        return self.budget if self.budget is not None else self.strong_share

    def _spend(self, responses: LoggedResponses, choice: np.ndarray) -> np.ndarray:
        """[Q] what the constraint counts per query: its cost, or whether it went to the dearest model."""
        if self.budget is not None:
            return responses.cost[np.arange(len(choice)), choice]
        return (choice == int(np.argmax(self.unit_cost_))).astype(np.float64)

    def _candidates(self, proba: np.ndarray):
        m = len(self.unit_cost_)
        for lam in candidate_lambdas(proba, self.unit_cost_, self.n_lambdas):
            yield Policy("lambda", lam=float(lam))
        for j in range(m):
            yield Policy("single", model=j)
        # Random routing between two models, at the mix that spends the limit (in expectation).
        unit = self.unit_cost_ if self.budget is not None else (np.arange(m) == np.argmax(self.unit_cost_)) * 1.0
        for i in range(m):
            for j in range(m):
                if unit[j] > self._limit() > unit[i]:
                    for share in np.linspace(0.0, 1.0, 21)[1:-1]:
                        yield Policy("random", model=i, other=j, share=float(share))

    @staticmethod
    def _choose(policy: Policy, proba: np.ndarray, coin: np.ndarray, unit_cost=None) -> np.ndarray:
        if policy.kind == "lambda":
            return route(proba, unit_cost, policy.lam)
        if policy.kind == "single":
            return np.full(len(proba), policy.model)
        return np.where(coin < policy.share, policy.other, policy.model)

    def _choose_fitted(self, policy: Policy, proba: np.ndarray, queries) -> np.ndarray:
        return self._choose(policy, proba, _coin(queries, self.seed), self.unit_cost_)

    def predict_proba(self, queries) -> np.ndarray:
        """[N, M] predicted chance that each model answers each query correctly."""
        require_fitted(self, "policy_")
        queries = np.asarray(list(queries), dtype=object)
        m = len(self.models_)
        models = np.tile(np.asarray(self.models_, dtype=object), len(queries))
        flat = self.scorer_.predict_proba(np.repeat(queries, m), [""] * (len(queries) * m), models)
        return flat.reshape(len(queries), m)

    def predict(self, queries) -> np.ndarray:
        """[N] index (into models_) of the model to call for each query."""
        require_fitted(self, "policy_")
        queries = np.asarray(list(queries), dtype=object)
        return self._choose_fitted(self.policy_, self.predict_proba(queries), queries)

    def evaluate(self, responses: LoggedResponses) -> RouterEvaluation:
        require_fitted(self, "policy_")
        if tuple(responses.models) != tuple(self.models_):
            raise InvalidInputError(f"responses have models {responses.models}, the router {self.models_}")
        proba = score_responses(self.scorer_, _query_only(responses))
        choice = self._choose_fitted(self.policy_, proba, responses.queries)
        rows = np.arange(responses.n_queries)
        correct, cost = responses.correct[rows, choice], responses.cost[rows, choice]
        weak, strong = int(np.argmin(self.unit_cost_)), int(np.argmax(self.unit_cost_))
        acc_weak, acc_strong = responses.correct[:, weak].mean(), responses.correct[:, strong].mean()
        curve = []
        for lam in candidate_lambdas(proba, self.unit_cost_, 64):
            c = route(proba, self.unit_cost_, lam)
            curve.append(((c == strong).mean(), responses.correct[rows, c].mean()))
        apgr, cpt = routing_curve_metrics(curve, acc_weak, acc_strong)
        return RouterEvaluation(
            float(correct.mean()), float(cost.mean()), choice, correct, cost, float((choice == strong).mean()),
            performance_gap_recovered(correct.mean(), acc_weak, acc_strong), apgr, cpt,
        )


def performance_gap_recovered(accuracy: float, weak: float, strong: float) -> float:
    """RouteLLM's PGR: the fraction of the weak-to-strong accuracy gap a router recovers."""
    return float((accuracy - weak) / (strong - weak)) if strong != weak else float("nan")


def routing_curve_metrics(curve, weak: float, strong: float, level: float = CPT_LEVEL) -> tuple[float, float]:
    """(APGR, CPT(level)) of a routing curve [(strong_share, accuracy), ...]: the trapezoid area under PGR
    against strong_share on [0, 1], the curve closed by all-weak (0, PGR 0) and all-strong (1, PGR 1);
    and the smallest strong_share whose PGR reaches `level` (NaN when weak and strong tie)."""
    if strong == weak:
        return float("nan"), float("nan")
    points = sorted([(0.0, 0.0), (1.0, 1.0), *((s, performance_gap_recovered(a, weak, strong)) for s, a in curve)])
    share, pgr = np.array(points).T
    # At each share keep the best PGR reached there (several lambdas can route alike).
    share_u = np.unique(share)
    pgr_u = np.array([pgr[share == s].max() for s in share_u])
    apgr = float(np.sum((pgr_u[1:] + pgr_u[:-1]) / 2 * np.diff(share_u)))
    reached = share_u[pgr_u >= level]
    return apgr, float(reached.min()) if len(reached) else float("nan")
