"""Budgeted cascade optimisation, exact over candidate thresholds.

A cascade is a chain of distinct models `(c_1, ..., c_l)` with thresholds `(t_1, ..., t_{l-1})`: a
query goes to `c_1`; it stops at stage j < l when the scorer's score of that answer is >= t_j, and at
stage l otherwise. It pays the cost of every stage it reaches and is right when the answer it stops at
is right. Inputs are the `[Q, M]` matrices of scores, correctness and costs of logged responses.

FrugalGPT grid-searches chains and thresholds by simulating each combination (`grid_search_frontier`
below, kept as the readable reference). `optimize_cascade` reaches the same answer from cumulative
sums. Each model's candidate thresholds `tau[0..G-1]` split its scores into G+1 bins
`u = #{tau <= s}`; a query passes stage j with threshold index k (`t = tau[k]`) iff `u <= k`, and
k = -1 (t = -inf) stops every query there, which is how chains shorter than L appear. For a fixed
prefix `(c_1..c_{L-1})` a weighted histogram over the (L-1)-dim bin grid, cumulatively summed along
every axis, gives for every threshold tuple at once the total correctness and cost of the queries that
reach each stage. So every (chain, threshold tuple) is evaluated exactly, for the price of one
histogram per prefix; the Pareto frontier of all of them is one sort.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from alloyml.errors import InvalidInputError

# Relative and absolute slack of a budget comparison: a budget computed as one model's mean cost must
# admit that model alone, whatever order the sums were taken in.
BUDGET_RTOL = 1e-9
BUDGET_ATOL = 1e-12
# Above this many points, `pareto` first prefilters with the frontier of a strided sample.
PARETO_PREFILTER_MIN_POINTS = 20_000
# The sample's stride: a prime, so the sample does not line up with the grid's regular layout.
PARETO_SAMPLE_STRIDE = 97
# Largest histogram the optimiser builds per prefix (cells x 2M weights, float64: 400 MB).
MAX_GRID_ENTRIES = 50_000_000


def within_budget(cost, budget: float):
    """cost <= budget up to BUDGET_RTOL / BUDGET_ATOL (elementwise for arrays)."""
    return np.asarray(cost) <= budget * (1 + BUDGET_RTOL) + BUDGET_ATOL


@dataclass(frozen=True)
class CascadePoint:
    """One cascade: model indices in call order and the stop thresholds of all stages but the last."""

    chain: tuple[int, ...]
    thresholds: tuple[float, ...]
    accuracy: float
    mean_cost: float


@dataclass(frozen=True)
class Frontier:
    """The cost–accuracy Pareto frontier: cost non-decreasing, accuracy strictly increasing.

    cost, accuracy: [P] mean cost per query and accuracy of `points`.
    """

    points: list[CascadePoint]
    cost: np.ndarray
    accuracy: np.ndarray

    def best_under(self, budget: float) -> int:
        """Index of the most accurate point with mean cost <= budget (up to rounding: a budget computed as
        one model's mean cost must admit that model alone, whatever order the sums were taken in)."""
        k = int(np.searchsorted(self.cost, budget * (1 + BUDGET_RTOL) + BUDGET_ATOL, side="right")) - 1
        if k < 0:
            raise InvalidInputError(
                f"budget {budget!r} is below the cheapest cascade's mean cost {self.cost[0]:.6g}"
            )
        return k


def _check(scores, correct, cost):
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    cost = np.asarray(cost, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != correct.shape or scores.shape != cost.shape:
        raise InvalidInputError(
            f"scores, correct and cost must be [Q, M] of one shape; got {scores.shape}, {correct.shape}, "
            f"{cost.shape}"
        )
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise InvalidInputError(f"need at least one query and one model; got shape {scores.shape}")
    if not np.isfinite(scores).all() or not np.isfinite(cost).all():
        raise InvalidInputError("scores and cost must be finite")
    return scores, correct, cost


def candidate_thresholds(scores: np.ndarray, n_thresholds: int | None) -> np.ndarray:
    """[M, G] sorted candidate thresholds per model: every distinct score (None), else G quantiles
    (actual score values). Rows shorter than G are padded with their maximum (duplicate candidates
    only repeat points)."""
    columns = []
    for s in scores.T:
        distinct = np.unique(s)
        if n_thresholds is not None and len(distinct) > n_thresholds:
            distinct = np.unique(np.quantile(s, np.linspace(0.0, 1.0, n_thresholds), method="lower"))
        columns.append(distinct)
    g = max(len(c) for c in columns)
    return np.stack([np.pad(c, (0, g - len(c)), mode="edge") for c in columns])


def pareto(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the Pareto frontier of points, by increasing cost (ties: the more accurate first)."""
    if len(cost) > PARETO_PREFILTER_MIN_POINTS:
        # Sorting millions of points dominates the optimiser; first drop every point that the frontier
        # of a strided sample already (weakly) dominates, which no frontier point is, bar exact ties.
        sample = _pareto_sorted(cost, accuracy, np.arange(0, len(cost), PARETO_SAMPLE_STRIDE))
        pos = np.searchsorted(cost[sample], cost, side="right") - 1
        best = np.where(pos >= 0, accuracy[sample][np.maximum(pos, 0)], -np.inf)
        return _pareto_sorted(cost, accuracy, np.union1d(np.flatnonzero(accuracy > best), sample))
    return _pareto_sorted(cost, accuracy, np.arange(len(cost)))


def _pareto_sorted(cost: np.ndarray, accuracy: np.ndarray, among: np.ndarray) -> np.ndarray:
    order = among[np.lexsort((-accuracy[among], cost[among]))]
    acc = accuracy[order]
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], acc[:-1]]))
    return order[acc > best_before]


def optimize_cascade(
    scores, correct, cost, max_length: int = 3, n_thresholds: int | None = 32
) -> Frontier:
    """The exact cost–accuracy frontier over chains of up to `max_length` distinct models and the
    candidate thresholds of `candidate_thresholds(scores, n_thresholds)`.

    scores, correct, cost: [Q, M]. Returns mean cost and accuracy per query.
    """
    scores, correct, cost = _check(scores, correct, cost)
    if max_length < 1:
        raise InvalidInputError(f"max_length must be >= 1, got {max_length}")
    n, m = scores.shape
    length = min(max_length, m)
    tau = candidate_thresholds(scores, n_thresholds)  # [M, G]
    g = tau.shape[1]
    bins = g + 1  # u in 0..G
    u = np.stack([np.searchsorted(tau[j], scores[:, j], side="right") for j in range(m)], axis=1)  # [Q, M]
    weights = np.concatenate([correct.astype(np.float64), cost], axis=1)  # [Q, 2M]
    dims = length - 1
    cells = bins**dims
    if cells * 2 * m > MAX_GRID_ENTRIES:
        raise InvalidInputError(
            f"{bins - 1} candidate thresholds per stage and chains of length {length} need a grid of "
            f"{cells} cells per prefix; lower n_thresholds or max_length"
        )
    col = np.arange(2 * m)
    # Points are (prefix, threshold indices k in -1..G-1 per axis, last model); threshold index k maps
    # to the grid position k + 1.
    prefixes = list(itertools.permutations(range(m), dims))
    n_last = m - dims
    grid = bins**dims
    acc_all = np.empty((len(prefixes), grid, n_last))
    cost_all = np.empty_like(acc_all)
    lasts = np.empty((len(prefixes), n_last), dtype=np.int64)
    for p_i, prefix in enumerate(prefixes):
        cell = np.zeros(n, dtype=np.int64)
        for j in prefix:
            cell = cell * bins + u[:, j]
        flat = (cell[:, None] * (2 * m) + col).ravel()
        hist = np.bincount(flat, weights=weights.ravel(), minlength=cells * 2 * m)
        reach = hist.reshape((bins,) * dims + (2 * m,))
        for axis in range(dims):
            reach = np.cumsum(reach, axis=axis)
        # reach[x_1..x_d, w]: sum of w over queries with u_i <= x_i; pad k = -1 (nobody passes) in front.
        reach = np.pad(reach, [(1, 0)] * dims + [(0, 0)])  # [(G+2)^d, 2M], index k+1, G+1 = "no limit"
        acc_pre, cost_pre = _prefix_totals(reach, prefix, m, g)
        last = np.array([c for c in range(m) if c not in prefix], dtype=np.int64)
        full = reach[(slice(0, bins),) * dims]  # thresholds k in -1..G-1
        acc_all[p_i] = (acc_pre[..., None] + full[..., last]).reshape(grid, n_last)
        cost_all[p_i] = (cost_pre[..., None] + full[..., m + last]).reshape(grid, n_last)
        lasts[p_i] = last
    acc_flat, cost_flat = acc_all.reshape(-1) / n, cost_all.reshape(-1) / n
    keep = pareto(cost_flat, acc_flat)
    points = [
        _decode(int(f), prefixes, lasts, tau, bins, dims, grid, n_last, acc_flat[f], cost_flat[f]) for f in keep
    ]
    return Frontier(points, cost_flat[keep], acc_flat[keep])


def _prefix_totals(reach: np.ndarray, prefix: tuple[int, ...], m: int, g: int):
    """Correct answers and cost contributed by the prefix stages, on the threshold grid [(G+1)^d].

    Stage j (0-based) is reached by queries passing stages < j: `reach` at the first j threshold axes,
    with the remaining axes at "no limit" (index G+1). Stage j keeps those that do not pass it too.
    """
    dims = len(prefix)
    bins = g + 1
    acc = np.zeros((bins,) * dims)
    cost = np.zeros((bins,) * dims)
    for j, model in enumerate(prefix):
        reached = reach[(slice(0, bins),) * j + (g + 1,) * (dims - j)]  # [bins]^j, 2M
        passed = reach[(slice(0, bins),) * (j + 1) + (g + 1,) * (dims - j - 1)]  # [bins]^(j+1), 2M
        shape = (bins,) * j + (1,) * (dims - j)
        shape_passed = (bins,) * (j + 1) + (1,) * (dims - j - 1)
        acc = acc + reached[..., model].reshape(shape) - passed[..., model].reshape(shape_passed)
        cost = cost + reached[..., m + model].reshape(shape)
    return acc, cost


def _decode(flat, prefixes, lasts, tau, bins, dims, grid, n_last, accuracy, mean_cost) -> CascadePoint:
    p_i, rest = divmod(flat, grid * n_last)
    cell, c_i = divmod(rest, n_last)
    ks = np.unravel_index(cell, (bins,) * dims) if dims else ()
    chain = list(prefixes[p_i]) + [int(lasts[p_i, c_i])]
    thresholds = []
    for j, pos in enumerate(ks):
        k = int(pos) - 1
        if k < 0:  # everyone stops at stage j: later stages are never reached
            chain = chain[: j + 1]
            break
        thresholds.append(float(tau[chain[j], k]))
    return CascadePoint(tuple(chain), tuple(thresholds), float(accuracy), float(mean_cost))


def simulate_cascade(scores, correct, cost, chain, thresholds):
    """Run one cascade on logged responses, query by query (vectorised over queries).

    Returns (stage [Q] int, the 0-based stage each query stops at; correct [Q] bool; cost [Q] float).
    """
    scores, correct, cost = _check(scores, correct, cost)
    if len(thresholds) != len(chain) - 1 or not chain:
        raise InvalidInputError(f"a chain of {len(chain)} models needs {len(chain) - 1} thresholds, got {thresholds}")
    n = scores.shape[0]
    stage = np.full(n, len(chain) - 1)
    active = np.ones(n, dtype=bool)
    paid = np.zeros(n)
    for j, model in enumerate(chain):
        paid[active] += cost[active, model]
        if j == len(chain) - 1:
            break
        stop = active & (scores[:, model] >= thresholds[j])
        stage[stop] = j
        active &= ~stop
    got = correct[np.arange(n), np.asarray(chain)[stage]]
    return stage, got, paid


def grid_search_frontier(
    scores, correct, cost, max_length: int = 3, n_thresholds: int | None = 32
) -> Frontier:
    """FrugalGPT's search: simulate every chain and every tuple of candidate thresholds. The slow
    reference for `optimize_cascade` (same candidates, same frontier)."""
    scores, correct, cost = _check(scores, correct, cost)
    m = scores.shape[1]
    tau = candidate_thresholds(scores, n_thresholds)
    points = []
    for length in range(1, min(max_length, m) + 1):
        for chain in itertools.permutations(range(m), length):
            for thresholds in itertools.product(*(np.unique(tau[c]) for c in chain[:-1])):
                _, got, paid = simulate_cascade(scores, correct, cost, chain, thresholds)
                points.append(CascadePoint(chain, tuple(map(float, thresholds)), got.mean(), paid.mean()))
    acc = np.array([p.accuracy for p in points])
    mean_cost = np.array([p.mean_cost for p in points])
    keep = pareto(mean_cost, acc)
    return Frontier([points[i] for i in keep], mean_cost[keep], acc[keep])


def grid_size(m: int, max_length: int, n_thresholds: int) -> int:
    """How many (chain, thresholds) combinations a grid search over these sizes simulates."""
    return sum(math.perm(m, k) * n_thresholds ** (k - 1) for k in range(1, min(max_length, m) + 1))
