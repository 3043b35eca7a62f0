"""Cooperative games whose Shapley and Banzhaf values are known in closed form.

They follow the utility protocol (`n`, `game(subset) -> float`, `fits`), so every estimator can be
checked against exact answers without training a model (the idea of pyDVL's `games.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from math import comb

import numpy as np

from alloyml.errors import InvalidInputError


class Game(ABC):
    """Base: counts evaluations like `Utility.fits` so methods report utility_evaluations uniformly."""

    n: int

    def __call__(self, subset) -> float:
        self.fits += 1
        return float(self.value(np.asarray(subset, dtype=np.int64)))

    @abstractmethod
    def value(self, subset: np.ndarray) -> float:
        """The game's value of `subset`."""


class AdditiveGame(Game):
    """U(S) = sum of weights[S]. Every normalised semivalue of point i equals weights[i]."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n = self.weights.shape[0]
        self.fits = 0

    def value(self, subset):
        return self.weights[subset].sum()

    def shapley_values(self) -> np.ndarray:
        return self.weights.copy()

    banzhaf_values = shapley_values


class VotingGame(Game):
    """Symmetric majority vote: U(S) = 1 if |S| > n/2 else 0, for even n.

    Shapley: 1/n each (symmetry + efficiency). Banzhaf: i is pivotal iff exactly n/2 of the
    other n-1 points are in S, so C(n-1, n/2) / 2^(n-1).
    """

    def __init__(self, n: int):
        if n < 2 or n % 2:
            raise InvalidInputError(f"VotingGame needs an even n >= 2, got {n}")
        self.n = n
        self.fits = 0

    def value(self, subset):
        return float(len(subset) > self.n // 2)

    def shapley_values(self) -> np.ndarray:
        return np.full(self.n, 1.0 / self.n)

    def banzhaf_values(self) -> np.ndarray:
        return np.full(self.n, comb(self.n - 1, self.n // 2) / 2.0 ** (self.n - 1))


class AirportGame(Game):
    """Airport cost sharing as a utility: U(S) = -max(costs[S]) (0 for the empty set).

    With costs sorted ascending c_1 <= ... <= c_n (c_0 = 0), the marginal of point i decomposes into
    steps (c_j - c_{j-1}) for j <= i that it pays iff no point ranked >= j is already in S:
    Shapley_i = -sum_j (c_j - c_{j-1}) / (n - j + 1);  Banzhaf_i = -sum_j (c_j - c_{j-1}) / 2^(n - j).
    """

    def __init__(self, costs):
        self.costs = np.asarray(costs, dtype=np.float64)
        if np.any(self.costs < 0):
            raise InvalidInputError("AirportGame costs must be non-negative")
        self.n = self.costs.shape[0]
        self.fits = 0

    def value(self, subset):
        return -self.costs[subset].max() if len(subset) else 0.0

    def _closed_form(self, share_of_step) -> np.ndarray:
        order = np.argsort(self.costs, kind="stable")
        sorted_costs = self.costs[order]
        steps = np.diff(sorted_costs, prepend=0.0)  # [n] c_j - c_{j-1}
        j = np.arange(1, self.n + 1)
        per_rank = -np.cumsum(steps * share_of_step(j))
        values = np.empty(self.n)
        values[order] = per_rank
        return values

    def shapley_values(self) -> np.ndarray:
        return self._closed_form(lambda j: 1.0 / (self.n - j + 1))

    def banzhaf_values(self) -> np.ndarray:
        return self._closed_form(lambda j: 0.5 ** (self.n - j))
