"""Read-only queries behind the dashboard pages, cached per store.

Every function takes `key` — the (db_url, home) pair of the store it reads — so that two stores never share
a cache entry. Results are small pandas frames or dataclasses: aggregates (histograms, lowest/highest k,
counts) are computed by the store in SQL, so a page never pulls a million data values into Python. Cached
results live `TTL_SECONDS`, which keeps the dashboard fresh while runs are being recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from alloyml.platform import entities as e
from alloyml.platform.client import Platform
from alloyml.platform.settings import Settings

TTL_SECONDS = 30
# Rank correlations and noisy-label detection of large runs read the values of a random sample of points
# this large (by primary key), never every value of a million-point run.
SAMPLE_POINTS = 2_000

StoreKey = tuple[str, str]


def current_store() -> StoreKey:
    """The store that ALLOYML_DB_URL / ALLOYML_HOME name, as a cache key."""
    settings = Settings.from_env()
    return settings.db_url, str(settings.home)


@st.cache_resource(show_spinner=False)
def platform(key: StoreKey) -> Platform:
    return Platform(db_url=key[0], home=key[1])


def _store(key: StoreKey):
    return platform(key).store


# -- schedules ---------------------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def schedules(key: StoreKey) -> list[e.Schedule]:
    return _store(key).list_schedules()


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def schedule_firings(key: StoreKey, schedule_id: int | None = None, limit: int = 200) -> list[e.ScheduleFiring]:
    return _store(key).list_firings(schedule_id, limit=limit)


# -- runs and workflows -----------------------------------------------------------------------------------
def run_rows(runs: list[e.Run]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [r.id for r in runs],
        "kind": [r.kind for r in runs],
        "name": [r.name or "" for r in runs],
        "status": [r.status for r in runs],
        "started": pd.to_datetime([r.started_at for r in runs]),
        "seconds": pd.array([r.seconds for r in runs], dtype="Float64"),
    })


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def recent_runs(key: StoreKey, kind: str | None = None, limit: int = 50) -> list[e.Run]:
    return _store(key).list_runs(kind=kind, limit=limit)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def run_counts(key: StoreKey) -> pd.DataFrame:
    """One row per (kind, status) with the number of runs."""
    counts = _store(key).run_counts()
    return pd.DataFrame([{"kind": kind, "status": status, "runs": n} for (kind, status), n in sorted(counts.items())],
                        columns=["kind", "status", "runs"])


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def get_run(key: StoreKey, run_id: int) -> e.Run:
    return _store(key).get_run(run_id)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def recent_workflows(key: StoreKey, limit: int = 50) -> list[e.Workflow]:
    return _store(key).list_workflows(limit=limit)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def workflow_steps(key: StoreKey, workflow_id: int) -> list[e.WorkflowStep]:
    return _store(key).workflow_steps(workflow_id)


# -- data values ------------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def value_histogram(key: StoreKey, run_id: int) -> pd.DataFrame:
    """Bins of a run's values (start, end, points) in the store's default binning, which it precomputes
    when the values are written (any other bin count is a GROUP BY over every value: seconds at 1M)."""
    counts, edges = _store(key).value_histogram(run_id)
    return pd.DataFrame({"start": edges[:-1], "end": edges[1:], "points": counts})


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def extreme_values(key: StoreKey, run_id: int, k: int, lowest: bool) -> e.DataValues:
    store = _store(key)
    return store.lowest_values(run_id, k) if lowest else store.highest_values(run_id, k)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def values_at(key: StoreKey, run_id: int, indices: tuple[int, ...]) -> e.DataValues:
    return _store(key).values_at(run_id, list(indices))


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def all_values(key: StoreKey, run_id: int) -> e.DataValues:
    return _store(key).all_values(run_id)


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def dataset(key: StoreKey, dataset_id: int) -> e.Dataset:
    return _store(key).get_dataset(dataset_id)


def dataset_rows(key: StoreKey, dataset_id: int, indices: np.ndarray) -> pd.DataFrame:
    """The raw rows (features and label) of some points, indexed by point index."""
    info = dataset(key, dataset_id)
    x, y = platform(key).load_dataset(dataset_id, mmap=True)  # a few rows of a million, without loading them
    columns = info.schema.get("columns") or [f"x{i}" for i in range(x.shape[1])]
    inside = indices[(indices >= 0) & (indices < len(x))]
    rows = pd.DataFrame(x[inside], columns=columns, index=pd.Index(inside, name="point"))
    if y is not None:
        rows["label"] = y[inside]
    return rows


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def flipped_values(key: StoreKey, run_id: int, artifact: str, seed: int = 0) -> tuple[np.ndarray, int]:
    """(values of the flipped points — all, or a random SAMPLE_POINTS of them —, number of flipped points).

    `artifact` holds the flipped point indices as .npy or .json.
    """
    artifacts = platform(key).artifacts
    raw = artifacts.get_json(artifact) if artifact.endswith(".json") else artifacts.get_array(artifact)
    flipped = np.asarray(raw, dtype=np.int64).ravel()
    if len(flipped) > SAMPLE_POINTS:
        flipped = np.random.default_rng(seed).choice(flipped, SAMPLE_POINTS, replace=False)
    return values_at(key, run_id, tuple(sorted(flipped.tolist()))).values, int(len(np.asarray(raw).ravel()))


def paired_values(key: StoreKey, run_ids: list[int], n_points: int, seed: int = 0) -> pd.DataFrame:
    """Values of the same points under several runs, one column per run, for rank correlations.

    Runs up to SAMPLE_POINTS points are read whole; larger ones on a random sample of point indices
    (0 .. n_points - 1).
    """
    if n_points <= SAMPLE_POINTS:
        columns = {}
        for run_id in run_ids:
            values = all_values(key, run_id)
            columns[run_id] = pd.Series(values.values, index=values.indices)
        return pd.DataFrame(columns).dropna()
    sample = np.sort(np.random.default_rng(seed).choice(n_points, SAMPLE_POINTS, replace=False))
    wanted = tuple(int(i) for i in sample)
    return pd.DataFrame({run_id: values_at(key, run_id, wanted).values for run_id in run_ids}, index=sample)


# -- models and merges ------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def models(key: StoreKey) -> dict[int, e.Model]:
    return {m.id: m for m in _store(key).list_models()}


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def merges(key: StoreKey) -> list[e.Merge]:
    return _store(key).list_merges()


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def lineage(key: StoreKey, model_id: int | None = None) -> list[e.LineageEdge]:
    return _store(key).lineage_edges(model_id)


# -- cascades and trials ----------------------------------------------------------------------------------
@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def cascades(key: StoreKey) -> list[e.Cascade]:
    return _store(key).list_cascades()


@st.cache_data(ttl=5, show_spinner=False)
def cascade_requests(key: StoreKey, cascade_id: int, limit: int = 2_000) -> pd.DataFrame:
    """The latest `limit` requests, oldest first (a short TTL: this is the live view)."""
    requests = _store(key).cascade_requests(cascade_id, limit=limit)[::-1]
    return pd.DataFrame({
        "stage": [r.stage_reached for r in requests],
        "cost": [r.cost for r in requests],
        "latency_ms": [r.latency_ms for r in requests],
        "frontier_point": pd.array([r.frontier_point for r in requests], dtype="Int64"),
        "at": pd.to_datetime([r.created_at for r in requests]),
    })


REFIT_COLUMNS = ("run", "started", "status", "old version", "new version", "decision", "old accuracy",
                 "new accuracy", "old mean cost", "new mean cost", "budget", "held-out queries", "served version",
                 "reason")


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def cascade_refits(key: StoreKey, name: str, limit: int = 500) -> pd.DataFrame:
    """The `cascade-refit` runs of cascade `name` (newest first): both held-out evaluations and the decision."""
    runs = [r for r in _store(key).list_runs(kind="refit", limit=limit) if r.params.get("cascade") == name]

    def number(run, metric):
        value = run.metrics.get(metric)
        return float(value) if isinstance(value, int | float) else None

    return pd.DataFrame({
        "run": [r.id for r in runs],
        "started": pd.to_datetime([r.started_at for r in runs]),
        "status": [r.status for r in runs],
        "old version": pd.array([r.params.get("old_version") for r in runs], dtype="Int64"),
        "new version": pd.array([r.metrics.get("new_version") for r in runs], dtype="Int64"),
        "decision": [r.tags.get("decision", "") for r in runs],
        **{column: pd.array([number(r, metric) for r in runs], dtype="Float64") for column, metric in (
            ("old accuracy", "old_accuracy"), ("new accuracy", "new_accuracy"), ("old mean cost", "old_mean_cost"),
            ("new mean cost", "new_mean_cost"))},
        "budget": pd.array([r.params.get("budget") for r in runs], dtype="Float64"),
        "held-out queries": pd.array([r.metrics.get("held_out_queries") for r in runs], dtype="Int64"),
        "served version": [r.tags.get("served_version", "") for r in runs],
        "reason": [r.tags.get("reason", r.error or "") for r in runs],
    }, columns=list(REFIT_COLUMNS))


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def trials(key: StoreKey, run_id: int) -> list[e.Trial]:
    return _store(key).list_trials(run_id)


# -- benchmark files --------------------------------------------------------------------------------------
def benchmark_results_dir(argv: list[str] | None = None) -> Path | None:
    """Where the benchmark scripts' JSON results are: `alloyml ui --benchmarks DIR` (handed to the app after
    `--`), else `benchmarks/results` of the source checkout this package runs from. None when neither exists
    (an installed package ships no benchmarks); the page then says where it looked."""
    argv = sys.argv[1:] if argv is None else argv
    if "--benchmarks" in argv[:-1]:
        return Path(argv[argv.index("--benchmarks") + 1])
    checkout = Path(__file__).resolve().parents[2] / "benchmarks"
    return checkout / "results" if (checkout / "_common.py").is_file() else None


BENCHMARK_RESULTS = benchmark_results_dir()


@st.cache_data(ttl=TTL_SECONDS, show_spinner=False)
def benchmark_rows(topic: str, results_dir: str) -> pd.DataFrame | None:
    """Rows of <results_dir>/<topic>.json, or None when that benchmark has not been run."""
    path = Path(results_dir) / f"{topic}.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    rows = pd.DataFrame(payload.get("rows", []))
    rows.attrs["when"] = payload.get("when")
    rows.attrs["machine"] = payload.get("machine")
    return rows
