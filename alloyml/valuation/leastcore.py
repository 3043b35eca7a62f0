"""Least core (Yan & Procaccia 2021, "If you like Shapley then you'll love the core"): the payoff x that
splits U(N) among the points so that the most any coalition S is short-changed, U(S) - x(S), is as small
as possible. A linear programme in (x, e):

    minimise e   subject to   x(S) + e >= U(S) for every coalition S,   x(N) = U(N).

Exact over all 2^n - 2 proper coalitions (n <= 16), or over `n_subsets` random coalitions (Monte Carlo
least core). The optimal x is often not unique; the solver's vertex is returned.
"""

from __future__ import annotations

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_entropy, sample_rng

MAX_EXACT_LEAST_CORE_POINTS = 16


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
    return ValuationResult(values, np.zeros(n), np.full(n, len(members)), "least_core",
                           {"subsidy": subsidy, "coalitions": int(len(members)),
                            "exact": n_subsets is None, "seed": seed},
                           utility_evaluations=getattr(utility, "fits", 0) - fits_before)
