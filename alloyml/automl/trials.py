"""The record every search in `alloyml.automl` produces per configuration it tried.

Searches hand each finished `TrialRecord` to an optional `on_trial` callback, which the workflow layer
wires to the store's trial entity; the library itself writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialRecord:
    """One configuration tried by a search.

    `cost` is in the search's own unit (tokens for LM searches, training examples seen for
    hyperparameter search); `seconds` is wall time spent on the trial.
    """

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    cost: float
    seconds: float
    status: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)


TrialCallback = Callable[[TrialRecord], None]
