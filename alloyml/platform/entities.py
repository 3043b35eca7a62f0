"""Plain dataclasses the store returns. ORM rows never leave the store; these do."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

RUN_STATUSES = ("running", "done", "failed")
STEP_STATES = ("pending", "running", "done", "failed", "cancelled")
LINEAGE_ROLES = ("base", "fine-tune", "merge input", "expert", "cascade stage")
CATCH_UP_POLICIES = ("skip", "latest", "all")
FIRING_OUTCOMES = ("claimed", "submitted", "failed", "skipped")


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    version: str
    n_rows: int
    schema: dict
    fingerprint: str
    artifact: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    architecture: str
    n_params: int
    artifact: str | None
    metrics: dict
    created_at: dt.datetime


@dataclass(frozen=True)
class LineageEdge:
    child_id: int
    parent_id: int
    role: str
    weight: float | None = None


@dataclass(frozen=True)
class Run:
    id: int
    kind: str
    name: str | None
    status: str
    params: dict
    metrics: dict
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    workflow_id: int | None = None
    dataset_id: int | None = None
    model_id: int | None = None
    tags: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class DataValues:
    """Values of some training points of one valuation run (aligned arrays)."""

    run_id: int
    indices: np.ndarray
    values: np.ndarray
    stderr: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class MetricHistory:
    """Every logged value of one metric of one run, in (step, logging) order; NaN where NaN/inf was logged."""

    run_id: int
    key: str
    steps: np.ndarray
    values: np.ndarray
    times: list[dt.datetime]

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class MergeInput:
    model_id: int
    weight: float | None


@dataclass(frozen=True)
class Merge:
    id: int
    run_id: int | None
    method: str
    config: dict
    output_model_id: int | None
    inputs: list[MergeInput]
    created_at: dt.datetime


@dataclass(frozen=True)
class Cascade:
    id: int
    name: str
    version: int
    stages: list
    thresholds: list
    costs: list
    budget: float
    plan: dict
    created_at: dt.datetime


@dataclass(frozen=True)
class CascadeRequest:
    stage_reached: int
    cost: float
    latency_ms: float
    scores: list = field(default_factory=list)
    frontier_point: int | None = None
    created_at: dt.datetime | None = None
    # What was asked and answered (None on requests logged before the store kept them).
    request_id: str | None = None
    query_id: str | None = None
    query: str | None = None
    answer: str | None = None
    model: str | None = None
    score: float | None = None
    calls: list = field(default_factory=list)  # each stage that answered: {model, answer, cost, score}
    errors: list = field(default_factory=list)  # stage failures: {model, error}
    labels: dict = field(default_factory=dict)  # model -> correct, attached by `alloyml cascade label`


@dataclass(frozen=True)
class Workflow:
    id: int
    name: str
    status: str
    inputs: dict
    spec: dict
    result_artifact: str | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class WorkflowStep:
    id: int
    workflow_id: int
    name: str
    state: str
    attempts: int
    depends_on: list
    resources: dict
    output_artifact: str | None
    error: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class Trial:
    id: int
    run_id: int
    number: int
    config: dict
    metrics: dict
    cost: float | None
    seconds: float | None
    status: str


@dataclass(frozen=True)
class Schedule:
    id: int
    name: str
    workflow: str
    cron: str
    timezone: str
    inputs: dict
    catch_up: str
    paused: bool
    active_since: dt.datetime
    created_at: dt.datetime


@dataclass(frozen=True)
class ScheduleFiring:
    id: int
    schedule_id: int
    slot: dt.datetime
    manual: bool
    outcome: str
    missed: int
    workflow_id: int | None
    error: str | None
    fired_at: dt.datetime
    workflow_status: str | None = None  # of the submitted workflow, when it still exists
