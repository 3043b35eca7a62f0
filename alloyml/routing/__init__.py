"""Routing between models: FrugalGPT cascades with budgeted thresholds, learned routers, model adapters and
Ray Serve deployment. A library; side effects (request logs) go through callbacks.

The Serve deployment lives in `alloyml.routing.serve` (it imports Ray); everything here is light.
"""

from alloyml.routing.adapters import Stage, as_answerer, build_stage, parse_stage_spec
from alloyml.routing.cascade import CascadeEvaluation, FrugalCascade, evaluate_plan
from alloyml.routing.guard import BudgetGuard
from alloyml.routing.optimizer import Frontier, grid_search_frontier, optimize_cascade, simulate_cascade
from alloyml.routing.plan import CascadePlan
from alloyml.routing.responses import LoggedResponses, load_responses
from alloyml.routing.router import LearnedRouter
from alloyml.routing.scorer import CallableScorer, TextScorer
from alloyml.routing.synthetic import make_logged_responses

__all__ = [
    "BudgetGuard",
    "CallableScorer",
    "CascadeEvaluation",
    "CascadePlan",
    "Frontier",
    "FrugalCascade",
    "LearnedRouter",
    "LoggedResponses",
    "Stage",
    "TextScorer",
    "as_answerer",
    "build_stage",
    "evaluate_plan",
    "grid_search_frontier",
    "load_responses",
    "make_logged_responses",
    "optimize_cascade",
    "parse_stage_spec",
    "simulate_cascade",
]
