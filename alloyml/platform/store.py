"""The store interface: what the `Platform` client may ask of a metadata store.

Every method returns entity dataclasses (`entities.py`) or numpy arrays, never ORM rows or sessions.
`SqlStore` (`sql_store.py`) implements it on SQLAlchemy; the interface exists so the client and the
workflow layer depend on behaviour, not on SQL.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alloyml.platform import entities as e


@dataclass(frozen=True)
class WorkflowLease:
    """Which process drives a workflow ('host:pid:token', or None) and when it last renewed the lease."""

    driver: str | None
    heartbeat_at: dt.datetime | None


class Store(ABC):
    # -- datasets and models ----------------------------------------------------------------------------
    @abstractmethod
    def add_dataset(self, name: str, version: str, n_rows: int, schema: dict, fingerprint: str,
                    artifact: str | None = None) -> e.Dataset: ...

    @abstractmethod
    def get_dataset(self, dataset_id: int) -> e.Dataset: ...

    @abstractmethod
    def list_datasets(self) -> list[e.Dataset]: ...

    @abstractmethod
    def add_model(self, name: str, architecture: str, n_params: int = 0, artifact: str | None = None,
                  metrics: dict | None = None, parents: Sequence[e.LineageEdge] = ()) -> e.Model:
        """Register a model; `parents` are edges whose child_id is ignored (the new model is the child)."""

    @abstractmethod
    def get_model(self, model_id: int) -> e.Model: ...

    @abstractmethod
    def list_models(self) -> list[e.Model]: ...

    @abstractmethod
    def update_model_metrics(self, model_id: int, metrics: dict) -> e.Model:
        """Merge `metrics` into the model's metrics."""

    @abstractmethod
    def lineage_edges(self, model_id: int | None = None) -> list[e.LineageEdge]:
        """All edges, or the ancestors' edges of one model (transitively)."""

    # -- runs and data values ---------------------------------------------------------------------------
    @abstractmethod
    def start_run(self, kind: str, name: str | None = None, params: dict | None = None,
                  workflow_id: int | None = None, dataset_id: int | None = None,
                  model_id: int | None = None) -> e.Run: ...

    @abstractmethod
    def finish_run(self, run_id: int, status: str = "done", metrics: dict | None = None,
                   error: str | None = None) -> e.Run: ...

    @abstractmethod
    def log_metrics(self, run_id: int, metrics: dict, step: int | None = None) -> e.Run:
        """Add `metrics` (key -> JSON-able value) at `step` (0 when None): each numeric value gets a history
        row; the run's latest value per key is the one with the highest step (the later write on a tie)."""

    @abstractmethod
    def log_metric_series(self, run_id: int, key: str, values: np.ndarray,
                          steps: np.ndarray | None = None) -> int:
        """Bulk-append one metric's curve (`steps` default 0..n-1) in one transaction; returns the count."""

    @abstractmethod
    def metric_history(self, run_id: int, key: str) -> e.MetricHistory: ...

    @abstractmethod
    def get_run(self, run_id: int) -> e.Run: ...

    @abstractmethod
    def list_runs(self, kind: str | None = None, status: str | None = None, limit: int = 50,
                  offset: int = 0, filter: str | None = None) -> list[e.Run]:
        """Newest first; `filter` is the search language of `alloyml.platform.search`."""

    @abstractmethod
    def set_tags(self, run_id: int, tags: dict[str, str] | None = None, /, **more: str) -> dict[str, str]:
        """Set tags (string key -> string value; `tags` for keys that are not identifiers, e.g. 'mlflow.user')
        in one atomic upsert, replacing a key's old value; returns all the run's tags."""

    @abstractmethod
    def tags(self, run_id: int) -> dict[str, str]: ...

    @abstractmethod
    def delete_tag(self, run_id: int, key: str) -> None:
        """Remove one tag; NotFoundError when the run has no such tag."""

    @abstractmethod
    def run_counts(self) -> dict[tuple[str, str], int]:
        """Number of runs per (kind, status)."""

    @abstractmethod
    def write_data_values(self, run_id: int, values: np.ndarray, stderr: np.ndarray | None = None,
                          counts: np.ndarray | None = None, indices: np.ndarray | None = None) -> int:
        """Bulk-write one run's values in one transaction; returns the number of rows."""

    @abstractmethod
    def lowest_values(self, run_id: int, k: int) -> e.DataValues: ...

    @abstractmethod
    def highest_values(self, run_id: int, k: int) -> e.DataValues: ...

    @abstractmethod
    def values_at(self, run_id: int, indices: Sequence[int]) -> e.DataValues: ...

    @abstractmethod
    def all_values(self, run_id: int) -> e.DataValues: ...

    @abstractmethod
    def value_summary(self, run_id: int) -> dict | None:
        """n, min, max, mean of a run's values (None before they are written)."""

    @abstractmethod
    def value_histogram(self, run_id: int, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """(counts[bins], edges[bins + 1]); 50 bins are precomputed at write time."""

    # -- merges, cascades, trials -----------------------------------------------------------------------
    @abstractmethod
    def record_merge(self, method: str, config: dict, inputs: Sequence[e.MergeInput],
                     output_model_id: int | None, run_id: int | None = None) -> e.Merge: ...

    @abstractmethod
    def list_merges(self) -> list[e.Merge]: ...

    @abstractmethod
    def save_cascade(self, name: str, stages: list, thresholds: list, costs: list, budget: float,
                     plan: dict | None = None) -> e.Cascade:
        """Store a new version of cascade `name` (versions count up from 1)."""

    @abstractmethod
    def get_cascade(self, name: str, version: int | None = None) -> e.Cascade:
        """A version of a cascade; the latest when `version` is None."""

    @abstractmethod
    def list_cascades(self) -> list[e.Cascade]: ...

    @abstractmethod
    def log_cascade_requests(self, cascade_id: int, requests: Sequence[e.CascadeRequest]) -> int: ...

    @abstractmethod
    def cascade_requests(self, cascade_id: int, limit: int = 10_000) -> list[e.CascadeRequest]:
        """The latest `limit` requests of one cascade version, newest first, with their labels."""

    @abstractmethod
    def label_cascade_requests(self, name: str, labels: Sequence[tuple[str, str | None, bool]],
                               where: Sequence[str] | None = None) -> int:
        """Attach correctness labels `(request_id, model, correct)` to logged requests of any version of
        cascade `name`; model None means the model whose answer was returned. A label replaces an earlier
        one for the same answer. `where` names each label's origin (e.g. "labels.csv line 3") in errors.
        All or nothing; returns the number of answers labelled."""

    @abstractmethod
    def labelled_cascade_requests(self, name: str) -> list[e.CascadeRequest]:
        """Every logged request of any version of cascade `name` that has a label, oldest first."""

    @abstractmethod
    def add_trial(self, run_id: int, number: int, config: dict, metrics: dict | None = None,
                  cost: float | None = None, seconds: float | None = None, status: str = "done") -> e.Trial: ...

    @abstractmethod
    def list_trials(self, run_id: int) -> list[e.Trial]: ...

    # -- workflows --------------------------------------------------------------------------------------
    @abstractmethod
    def create_workflow(self, name: str, inputs: dict, spec: dict, steps: Sequence[dict]) -> e.Workflow:
        """A workflow and its steps (each a dict with name, depends_on, resources), all pending."""

    @abstractmethod
    def get_workflow(self, workflow_id: int) -> e.Workflow: ...

    @abstractmethod
    def list_workflows(self, limit: int = 50, status: str | None = None) -> list[e.Workflow]: ...

    @abstractmethod
    def update_workflow(self, workflow_id: int, **fields) -> e.Workflow:
        """Set status, error or result_artifact."""

    @abstractmethod
    def workflow_steps(self, workflow_id: int) -> list[e.WorkflowStep]: ...

    @abstractmethod
    def update_step(self, workflow_id: int, name: str, *, increment_attempts: bool = False,
                    **fields) -> e.WorkflowStep:
        """Set state, error, output_artifact, started_at, finished_at of one step."""

    @abstractmethod
    def workflow_lease(self, workflow_id: int) -> WorkflowLease: ...

    @abstractmethod
    def claim_workflow(self, workflow_id: int, driver: str | None, expected: str | None, *,
                       unless_status: Sequence[str] = ()) -> bool:
        """Compare-and-swap the lease: set `driver` (None releases) only if the holder is `expected` and
        the workflow's status is not one of `unless_status` — one statement, so a workflow that finishes
        at the same moment cannot be claimed again."""

    @abstractmethod
    def heartbeat_workflow(self, workflow_id: int, driver: str) -> bool:
        """Renew the lease; False when `driver` no longer holds it."""

    @abstractmethod
    def request_workflow_cancel(self, workflow_id: int) -> e.Workflow:
        """Mark a pending or running workflow 'cancelling' (its driver finishes the job); others unchanged."""

    @abstractmethod
    def settle_workflow(self, workflow_id: int, status: str, *, steps_from: Sequence[str] = (),
                        steps_to: str | None = None, step_error: str | None = None, error: str | None = None,
                        result_artifact: str | None = None) -> e.Workflow:
        """In one transaction: set the workflow's status (and error / result), and move every step whose
        state is in `steps_from` to `steps_to` (with `step_error` when given)."""

    # -- schedules --------------------------------------------------------------------------------------
    @abstractmethod
    def add_schedule(self, name: str, workflow: str, cron: str, timezone: str, inputs: dict,
                     catch_up: str, now: dt.datetime | None = None) -> e.Schedule:
        """A new active schedule, active since `now` (default: the store's clock); the workflows layer has
        validated cron, timezone, workflow and inputs."""

    @abstractmethod
    def get_schedule(self, name: str) -> e.Schedule: ...

    @abstractmethod
    def list_schedules(self) -> list[e.Schedule]: ...

    @abstractmethod
    def set_schedule_paused(self, name: str, paused: bool, now: dt.datetime | None = None) -> e.Schedule:
        """Pause, or resume: resuming moves `active_since` to `now` (default: the store's clock), so slots
        of the pause never come due."""

    @abstractmethod
    def remove_schedule(self, name: str) -> None:
        """Delete a schedule and its firing history."""

    @abstractmethod
    def last_slot(self, schedule_id: int) -> dt.datetime | None:
        """The latest timetable (not manual) slot recorded for a schedule, whatever its outcome."""

    @abstractmethod
    def claim_firing(self, schedule_id: int, slot: dt.datetime, *, outcome: str = "claimed", missed: int = 0,
                     manual: bool = False) -> int | None:
        """Insert the firing row of (schedule, slot) in one statement; its id, or None when the slot was
        already claimed (by this or another scheduler)."""

    @abstractmethod
    def finish_firing(self, firing_id: int, outcome: str, workflow_id: int | None = None,
                      error: str | None = None) -> e.ScheduleFiring: ...

    @abstractmethod
    def list_firings(self, schedule_id: int | None = None, limit: int = 100) -> list[e.ScheduleFiring]:
        """Newest slot first, with each submitted workflow's current status."""
