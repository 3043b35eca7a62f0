"""The one result type every valuation method returns (Shapley family, KNN-Shapley, Data-OOB, TracIn).

Kept plain on purpose — numpy arrays and JSON-able params — so the store can persist it without knowing
which method produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alloyml.errors import InvalidInputError


@dataclass
class ValuationResult:
    """Values of n training points.

    values:  [n] float64, the estimated value of each point.
    stderr:  [n] float64, standard error of each value (0 for exact methods).
    counts:  [n] int64, how many marginal contributions / samples went into each value.
    method:  short name of the method, e.g. "tmc_shapley".
    params:  JSON-able parameters of the run (k, seed, truncation, ...).
    indices: [n] int64, ids of the points (default 0..n-1), kept through sorting and subsetting.
    utility_evaluations: how many utility values the method asked for (fitted or cached; 0 for
             closed-form methods).
    fit_failures: how many of those fits failed and scored the utility's default (see `Utility`).
    """

    values: np.ndarray
    stderr: np.ndarray
    counts: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    indices: np.ndarray | None = None
    utility_evaluations: int = 0
    fit_failures: int = 0

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        n = self.values.shape[0]
        self.stderr = np.asarray(self.stderr, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.indices = np.arange(n) if self.indices is None else np.asarray(self.indices, dtype=np.int64)
        for name in ("stderr", "counts", "indices"):
            if getattr(self, name).shape != (n,):
                raise InvalidInputError(
                    f"ValuationResult.{name} must have shape ({n},) like values, got {getattr(self, name).shape}"
                )

    def __len__(self) -> int:
        return self.values.shape[0]

    def ranks(self) -> np.ndarray:
        """[n] int64: 0 for the lowest-valued point, n-1 for the highest (ties broken by position)."""
        ranks = np.empty(len(self), dtype=np.int64)
        ranks[np.argsort(self.values, kind="stable")] = np.arange(len(self))
        return ranks

    def lowest(self, k: int) -> np.ndarray:
        """Ids (`indices`) of the k lowest-valued points, lowest first."""
        return self.indices[np.argsort(self.values, kind="stable")[:k]]

    def highest(self, k: int) -> np.ndarray:
        """Ids (`indices`) of the k highest-valued points, highest first."""
        return self.indices[np.argsort(-self.values, kind="stable")[:k]]

    def to_dict(self) -> dict:
        """JSON-able form (lists), the inverse of `from_dict`."""
        return {
            "values": self.values.tolist(),
            "stderr": self.stderr.tolist(),
            "counts": self.counts.tolist(),
            "indices": self.indices.tolist(),
            "method": self.method,
            "params": self.params,
            "utility_evaluations": self.utility_evaluations,
            "fit_failures": self.fit_failures,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ValuationResult:
        return cls(**data)
