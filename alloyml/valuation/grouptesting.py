"""Group-testing Shapley (Jia et al. 2019, "Towards efficient data valuation based on the Shapley value",
Algorithm 1).

Each sample draws a coalition size k with probability q(k) = (1/k + 1/(n-k)) / Z, Z = 2 * sum_{k<n} 1/k,
then a uniform coalition of that size, and scores it. The sampled scores estimate every pairwise
difference of Shapley values,

    dU_ij = Z/T * sum_t U(S_t) * (1[i in S_t] - 1[j in S_t])  ~  phi_i - phi_j,

and the values are a solution of the feasibility problem  sum_i s_i = U(N),
|s_i - s_j - dU_ij| <= epsilon / (2 sqrt n)  for all i < j, solved here as a linear programme that
minimises the largest violation. Because every dU_ij is a difference a_i - a_j of one vector
(a_i = Z/T * sum_t U(S_t) 1[i in S_t]), the programme always has a zero-violation solution, s = a + c with c
set by efficiency; `params["violation"]` reports what the solver reached (~0).
With `group_testing_samples(n, epsilon, delta, r)` samples the
result is within epsilon of the Shapley values in l2 norm with probability >= 1 - delta (Theorem 3, taken
with h(epsilon / (Z r sqrt(n) (1 - q_tot^2))); pyDVL's copy has 2 epsilon, i.e. about 4x fewer samples).
"""

from __future__ import annotations

import math

import numpy as np

from alloyml.errors import InvalidInputError
from alloyml.valuation.progress import counted_progress
from alloyml.valuation.result import ValuationResult
from alloyml.valuation.runner import run_entropy, sample_rng
from alloyml.valuation.utility import report_failures

# n(n-1) pair constraints: past this the LP is too large to be worth building
MAX_GROUP_TESTING_POINTS = 400


def _size_distribution(n: int) -> tuple[float, np.ndarray]:
    k = np.arange(1, n)
    z = 2.0 * np.sum(1.0 / k)
    return z, (1.0 / k + 1.0 / (n - k)) / z


def group_testing_samples(n: int, epsilon: float, delta: float, utility_range: float = 1.0) -> int:
    """Samples Theorem 3 of Jia et al. needs for an (epsilon, delta) guarantee in l2 norm, for utilities
    whose values span `utility_range`."""
    if n < 3:
        raise InvalidInputError(f"group testing needs n >= 3 points, got {n}")
    if epsilon <= 0 or not 0 < delta < 1 or utility_range <= 0:
        raise InvalidInputError("need epsilon > 0, 0 < delta < 1 and utility_range > 0, got "
                                f"{epsilon}, {delta}, {utility_range}")
    z, q = _size_distribution(n)
    k = np.arange(1, n)
    # q_tot = P(i and j are on different sides), weighted as in the proof; k = 1 enters with (n-2)/n
    q_tot = (n - 2) / n * q[0] + np.sum(q[1:] * (1 + 2 * k[1:] * (k[1:] - n) / (n * (n - 1))))
    u = epsilon / (z * utility_range * math.sqrt(n) * (1 - q_tot**2))
    h = (1 + u) * math.log1p(u) - u
    return math.ceil(8 * math.log(n * (n - 1) / (2 * delta)) / ((1 - q_tot**2) * h))


def group_testing_shapley(utility, n_samples: int, *, epsilon: float, seed: int | None = None,
                          progress=False) -> ValuationResult:
    """Shapley values from `n_samples` group tests (see `group_testing_samples` for how many give an
    (epsilon, delta) guarantee); `params["violation"]` is the solution's largest pairwise violation, to be
    compared with the paper's tolerance epsilon / (2 sqrt n). progress: True shows a rich bar."""
    from scipy.optimize import linprog

    if not (hasattr(utility, "n") and callable(utility)):
        raise InvalidInputError(f"utility must be a Utility or a game with `n`, got {type(utility).__name__}")
    n = utility.n
    if not 3 <= n <= MAX_GROUP_TESTING_POINTS:
        raise InvalidInputError(f"group testing needs 3 <= n <= {MAX_GROUP_TESTING_POINTS} points, got {n}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise InvalidInputError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if not epsilon > 0:
        raise InvalidInputError(f"epsilon must be > 0, got {epsilon}")
    entropy = run_entropy(seed)
    if hasattr(utility, "reseed"):
        utility.reseed(entropy)
    fits_before, failures_before = utility.fits, getattr(utility, "fit_failures", 0)
    total = utility.check_full_set() if hasattr(utility, "check_full_set") else utility(np.arange(n))
    z, q = _size_distribution(n)
    members = np.zeros((n_samples, n))
    scores = np.empty(n_samples)
    with counted_progress(progress, "group_testing_shapley", n_samples) as advance:
        for t in range(n_samples):  # one generator per sample: values depend only on the seed
            rng = sample_rng(entropy, t)
            subset = rng.choice(n, size=rng.choice(np.arange(1, n), p=q), replace=False)
            members[t, subset] = 1.0
            scores[t] = utility(subset)
            advance(1)
    weighted = z / n_samples * (members.T @ scores)  # dU_ij = weighted_i - weighted_j
    i, j = np.triu_indices(n, 1)
    pairs = len(i)
    differences = np.zeros((pairs, n))
    differences[np.arange(pairs), i], differences[np.arange(pairs), j] = 1.0, -1.0
    target = weighted[i] - weighted[j]
    # variables (s, e): +-(s_i - s_j - dU_ij) <= e;  sum s = U(N);  minimise e
    column = -np.ones((pairs, 1))
    solution = linprog(np.r_[np.zeros(n), 1.0],
                       A_ub=np.vstack([np.hstack([differences, column]), np.hstack([-differences, column])]),
                       b_ub=np.r_[target, -target], A_eq=np.r_[np.ones(n), 0.0][None, :], b_eq=[total],
                       bounds=[(None, None)] * n + [(0, None)], method="highs")
    if not solution.success:
        raise InvalidInputError(f"the group-testing programme has no solution: {solution.message}")
    values, violation = solution.x[:n], float(solution.x[n])
    failures = getattr(utility, "fit_failures", 0) - failures_before
    report_failures(utility, failures, utility.fits - fits_before, "group_testing_shapley")
    counts = members.sum(0).astype(np.int64)
    return ValuationResult(values, np.zeros(n), counts, "group_testing_shapley",
                           {"n_samples": n_samples, "epsilon": epsilon, "seed": seed, "violation": violation},
                           utility_evaluations=utility.fits - fits_before, fit_failures=failures)
