"""When a refitted cascade replaces the one in production: the promotion rule of `cascade-refit`.

Both plans are evaluated on the same held-out queries (labelled served requests neither was fitted on).
The new plan is promoted if and only if

    new_accuracy >= old_accuracy - tolerance     and     new_mean_cost <= BUDGET_SLACK * budget

(accuracy: the fraction of held-out queries whose returned answer is labelled correct; mean cost: the
mean over held-out queries of the summed cost of the stages called). Otherwise the old plan stays. A
tie in accuracy promotes: the new plan has also seen the recent traffic. `BUDGET_SLACK` is the same
allowance the cascade's budget is held to on held-out data elsewhere (README, tests/test_demo.py): the
fit keeps its training spend `COST_Z` standard errors below the budget, and once served, the budget
guard steps down to a cheaper point whenever the windowed spend exceeds the budget itself.
The old plan's own cost is not part of the rule: a new plan is never refused for being dearer than the
old one while it fits the budget, and never promoted for being cheaper while it is less accurate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from alloyml.errors import InvalidInputError

BUDGET_SLACK = 1.05


@dataclass(frozen=True)
class PromotionDecision:
    """The rule's verdict and the numbers it compared. accuracy_diff_se: standard error of the paired
    per-query accuracy difference (new - old), for reading the margin; it is not part of the rule."""

    promote: bool
    reason: str
    old_accuracy: float
    new_accuracy: float
    old_mean_cost: float
    new_mean_cost: float
    budget: float
    tolerance: float
    accuracy_diff_se: float

    def to_dict(self) -> dict:
        return asdict(self)


def decide_promotion(old_correct, new_correct, old_cost, new_cost, budget: float,
                     tolerance: float = 0.0) -> PromotionDecision:
    """Apply the promotion rule to per-query held-out outcomes of the two plans on the same queries.

    old_correct, new_correct: [Q] bool; old_cost, new_cost: [Q] float >= 0; budget > 0; tolerance >= 0
    (accuracy the new plan may lose, as a fraction of queries)."""
    old_correct, new_correct = np.asarray(old_correct, dtype=bool), np.asarray(new_correct, dtype=bool)
    old_cost, new_cost = np.asarray(old_cost, dtype=np.float64), np.asarray(new_cost, dtype=np.float64)
    n = len(old_correct)
    if n == 0 or not all(len(a) == n for a in (new_correct, old_cost, new_cost)):
        raise InvalidInputError(f"promotion needs the same >= 1 held-out queries for both plans; got "
                                f"{[len(a) for a in (old_correct, new_correct, old_cost, new_cost)]}")
    costs = np.concatenate([old_cost, new_cost])
    if not np.isfinite(costs).all() or (costs < 0).any():
        raise InvalidInputError("held-out costs must be finite and >= 0")
    if not math.isfinite(budget) or budget <= 0:
        raise InvalidInputError(f"budget must be a positive mean cost per query, got {budget!r}")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InvalidInputError(f"tolerance must be a finite fraction >= 0, got {tolerance!r}")
    old_acc, new_acc = float(old_correct.mean()), float(new_correct.mean())
    old_mean, new_mean = float(old_cost.mean()), float(new_cost.mean())
    diff = new_correct.astype(np.float64) - old_correct
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    accurate = new_acc >= old_acc - tolerance
    affordable = new_mean <= BUDGET_SLACK * budget
    if accurate and affordable:
        reason = (f"new accuracy {new_acc:.4f} >= old {old_acc:.4f} - {tolerance:g} and new mean cost "
                  f"{new_mean:.4g} <= {BUDGET_SLACK:g} x budget {budget:g}")
    else:
        failed = [] if accurate else [f"new accuracy {new_acc:.4f} < old {old_acc:.4f} - {tolerance:g}"]
        failed += [] if affordable else [f"new mean cost {new_mean:.4g} > {BUDGET_SLACK:g} x budget {budget:g}"]
        reason = "; ".join(failed)
    return PromotionDecision(accurate and affordable, reason, old_acc, new_acc, old_mean, new_mean, float(budget),
                             float(tolerance), se)
