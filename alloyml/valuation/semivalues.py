"""Semivalues: each one is a single weight function over subset sizes.

    value_i = sum over S subset of N\\{i} of  w(n, |S|) * (U(S + i) - U(S))

with w normalised so that sum_k C(n-1, k) w(n, k) = 1; then P(k) = C(n-1, k) w(n, k) is the probability
of a marginal at size k, and a semivalue is an expectation of marginals (what the samplers estimate).
Register a new one with `@register_semivalue("name")`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, gammaln

from alloyml.errors import ConfigError

SEMIVALUES: dict[str, type] = {}


def register_semivalue(name: str):
    def decorate(cls):
        SEMIVALUES[name] = cls
        cls.name = name
        return cls

    return decorate


def get_semivalue(name: str, **params):
    """The semivalue registered as `name` (shapley, banzhaf, beta), built with `params`."""
    if name not in SEMIVALUES:
        raise ConfigError(f"unknown semivalue {name!r}; known: {sorted(SEMIVALUES)}")
    return SEMIVALUES[name](**params)


def _log_comb(n, k):
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


class Semivalue(ABC):
    name: str

    @abstractmethod
    def log_weight(self, n: int, k: np.ndarray) -> np.ndarray:
        """log w(n, k) for subset sizes k in 0..n-1 (logs keep large n finite)."""

    def size_probabilities(self, n: int) -> np.ndarray:
        """[n] P(k) = C(n-1, k) w(n, k): the distribution of the size of S in a marginal."""
        k = np.arange(n)
        p = np.exp(_log_comb(n - 1, k) + self.log_weight(n, k))
        return p / p.sum()  # removes rounding only; the weights are normalised by construction

    def params(self) -> dict:
        return {}

    def q_quantile(self, u: np.ndarray) -> np.ndarray:
        """Quantiles of the inclusion probability q when the semivalue is written as a mixture over q
        (w(n, k) = E_q[q^k (1 - q)^(n-1-k)]), used by `OwenSampler`."""
        raise ConfigError(f"the {self.name} semivalue has no inclusion-probability form for OwenSampler")


@register_semivalue("shapley")
@dataclass
class Shapley(Semivalue):
    """w(n, k) = 1 / (n C(n-1, k)): every subset size equally likely (Shapley 1953)."""

    def log_weight(self, n, k):
        return -np.log(n) - _log_comb(n - 1, k)

    def q_quantile(self, u):
        return np.asarray(u, dtype=np.float64)  # q uniform on [0, 1]: int q^k (1-q)^(n-1-k) dq = 1/(n C(n-1, k))


@register_semivalue("banzhaf")
@dataclass
class Banzhaf(Semivalue):
    """w(n, k) = 2^-(n-1): every subset equally likely (Data Banzhaf, Wang & Jia 2023)."""

    def log_weight(self, n, k):
        return np.full(np.shape(k), -(n - 1) * np.log(2.0))

    def q_quantile(self, u):
        return np.full(np.shape(u), 0.5)  # q = 1/2 always


@register_semivalue("beta")
@dataclass
class Beta(Semivalue):
    """w(n, k) = B(k + beta, n - 1 - k + alpha) / B(alpha, beta) (Beta Shapley, Kwon & Zou 2022).

    Beta(1, 1) is Shapley; alpha > beta favours small subsets, where one point changes the model most
    (the paper recommends Beta(16, 1) for finding mislabelled rows).
    """

    alpha: float = 16.0
    beta: float = 1.0

    def __post_init__(self):
        if self.alpha <= 0 or self.beta <= 0:
            raise ConfigError(f"Beta semivalue needs alpha > 0 and beta > 0, got ({self.alpha}, {self.beta})")

    def log_weight(self, n, k):
        return betaln(k + self.beta, n - 1 - k + self.alpha) - betaln(self.alpha, self.beta)

    def q_quantile(self, u):
        from scipy.stats import beta as beta_distribution

        # B(k + b, n-1-k + a) / B(a, b) = E[q^k (1-q)^(n-1-k)] for q ~ Beta(b, a)
        return beta_distribution(self.beta, self.alpha).ppf(u)

    def params(self):
        return {"alpha": self.alpha, "beta": self.beta}
