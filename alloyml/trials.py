"""The record every search produces per configuration it tried, and what a search returns.

Every search — hyperparameters (`alloyml.automl.hpo`), inference settings, APE, DSPy and merge weights
(`alloyml.merging.search`) — hands each finished `TrialRecord` to an optional `on_trial` callback as it
finishes, and returns them all in a `SearchResult` (or a result that holds them in `trials`). The workflow
layer wires `on_trial` to the store's trial entity (`alloyml.workflows.recording.trial_recorder`); the
libraries write nothing. Kept beside errors.py so that automl and merging, which may not import each
other, share one type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrialRecord:
    """One configuration tried by a search.

    `cost` is in the search's own unit (tokens for LM searches, training examples seen for
    hyperparameter search, one per merge evaluated for merge search); `seconds` is wall time spent on the
    trial. `status` is "completed" or the search's reason it is not ("error", "stopped_early", ...);
    `error` says what went wrong when the search knows; `extra` holds search-specific details.
    """

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    cost: float
    seconds: float
    status: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


TrialCallback = Callable[[TrialRecord], None]


@dataclass
class SearchResult:
    """All trials in the order they finished, and the best configuration by `metric` (`mode` max or min).

    `storage_path`: where the search kept files of its own (Ray Tune's experiment folder), if any."""

    trials: list[TrialRecord]
    best_config: dict[str, Any]
    best_score: float
    metric: str = "score"
    mode: str = "max"
    seconds: float = 0.0
    storage_path: str | None = None

    @property
    def scores(self) -> np.ndarray:
        """Each trial's `metric` (NaN where a trial reported none), in trial order."""
        return np.array([t.metrics.get(self.metric, np.nan) for t in self.trials])

    @property
    def best_yaml(self) -> str:
        """The best configuration as YAML, ready to save as a config file."""
        import yaml

        return yaml.safe_dump(self.best_config, sort_keys=False)
