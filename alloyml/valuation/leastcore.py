"""Least core (Yan & Procaccia 2021, "If you like Shapley then you'll love the core"): the payoff x that
splits U(N) among the points so that the most any coalition S is short-changed, U(S) - x(S), is as small
as possible. A linear programme in (x, e):

    minimise e   subject to   x(S) + e >= U(S) for every coalition S,   x(N) = U(N).

Exact over all 2^n - 2 proper coalitions (n <= 16), or over `n_subsets` random coalitions (Monte Carlo
least core). The optimal x is often not unique: as pyDVL does, a second stage returns the one of least
Euclidean norm among the payoffs with the optimal e (the egalitarian least core, unique), solved with SLSQP
(`params["egalitarian"]`; False — the LP's vertex — if it does not converge or has > 70,000 coalitions).
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_entropy, sample_rng

MAX_EXACT_LEAST_CORE_POINTS = 16
MAX_EGALITARIAN_CONSTRAINTS = 70_000  # the second stage's dense constraint matrix


def _egalitarian(members, scores, total, subsidy, start):
    """(x, True): the least-norm payoff among those with the optimal subsidy (pyDVL's second stage, the
    egalitarian least core), which is unique; (start, False) if the solver does not converge."""
    from scipy.optimize import minimize

    slack = 1e-9 * max(1.0, abs(subsidy))
    bound = scores - subsidy - slack
    result = minimize(lambda x: 0.5 * x @ x, start, jac=lambda x: x, method="SLSQP",
                      constraints=[{"type": "ineq", "fun": lambda x: members @ x - bound, "jac": lambda x: members},
                                   {"type": "eq", "fun": lambda x: np.array([x.sum() - total]),
                                    "jac": lambda x: np.ones((1, len(x)))}],
                      options={"maxiter": 500, "ftol": 1e-12})
    feasible = result.success and np.all(members @ result.x >= bound - 1e-7) and abs(result.x.sum() - total) < 1e-7
    return (result.x, True) if feasible else (start, False)


def least_core(utility, *, n_subsets: int | None = None, seed: int | None = None) -> ValuationResult:
    """Least-core values of the utility's points; `params["subsidy"]` holds the optimal e.

    n_subsets: None enumerates every proper coalition; an int samples that many uniformly random ones."""
    from scipy.optimize import linprog

    if not (hasattr(utility, "n") and callable(utility)):
        raise InvalidInputError(f"utility must be a Utility or a game with `n`, got {type(utility).__name__}")
    n = utility.n
    if n_subsets is None:
        if n > MAX_EXACT_LEAST_CORE_POINTS:
            raise InvalidInputError(f"the exact least core needs n <= {MAX_EXACT_LEAST_CORE_POINTS}, got {n}; "
                                    "pass n_subsets to sample coalitions")
        masks = np.arange(1, 2**n - 1)
        members = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
    else:
        if n_subsets < 1:
            raise InvalidInputError(f"n_subsets must be >= 1, got {n_subsets}")
        members = sample_rng(run_entropy(seed), 0).random((n_subsets, n)) < 0.5
    fits_before = getattr(utility, "fits", 0)
    total = utility(np.arange(n))
    scores = np.array([utility(np.flatnonzero(row)) for row in members])
    # variables (x_1..x_n, e): -x(S) - e <= -U(S);  x(N) = U(N)
    a_ub = -np.hstack([members.astype(np.float64), np.ones((len(members), 1))])
    a_eq = np.r_[np.ones(n), 0.0][None, :]
    cost = np.r_[np.zeros(n), 1.0]
    solution = linprog(cost, A_ub=a_ub, b_ub=-scores, A_eq=a_eq, b_eq=[total],
                       bounds=[(None, None)] * (n + 1), method="highs")
    if not solution.success:
        raise InvalidInputError(f"the least-core programme has no solution: {solution.message}")
    values, subsidy = solution.x[:n], float(solution.x[n])
    egalitarian = False
    if len(members) <= MAX_EGALITARIAN_CONSTRAINTS:
        values, egalitarian = _egalitarian(members.astype(np.float64), scores, total, subsidy, values)
    return ValuationResult(values, np.zeros(n), np.full(n, len(members)), "least_core",
                           {"subsidy": subsidy, "coalitions": int(len(members)), "egalitarian": egalitarian,
                            "exact": n_subsets is None, "seed": seed},
                           utility_evaluations=getattr(utility, "fits", 0) - fits_before)
