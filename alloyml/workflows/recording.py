"""Recording library results in the store: the workflow layer's side of the dependency rule.

Steps run in Ray workers, possibly on other machines, so they receive the store's location
(`store_location(platform)`, passed as a workflow input) and open their own client with `open_platform`.
The input is stored as a reference, not as the URL: the driver resolves it from its own settings to the
database URL *without its password*, the artifact location (a folder or an object-store URL, which never
holds credentials) and the driver's home. On the node that runs the step, its own environment completes
it: the password comes from the node's ALLOYML_DB_URL when that names the same database (or from
PGPASSWORD / ~/.pgpass, as libpq reads them), object-store credentials from the node's environment (AWS_*,
~/.aws), and the node's ALLOYML_HOME (its read cache) from the node. So a credential never travels in a
step's arguments, and nodes need not share a disk once ALLOYML_ARTIFACTS is on object storage. Folders
(saved models) travel as artifact manifests (`ArtifactStore.put_directory` / `model_folder`), never as paths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alloyml.workflows.codec import StoreLocation


def store_location(platform) -> StoreLocation:
    from alloyml.platform.settings import without_password

    settings = platform.settings
    return StoreLocation(db_url=without_password(settings.db_url), home=str(settings.home),
                         artifacts=settings.artifact_location)


def node_settings(location: dict):
    """The `Settings` a step uses on the node it runs on: `location` completed from the node's environment."""
    from alloyml.platform.settings import Settings, without_password

    db_url = location["db_url"]
    own = os.environ.get("ALLOYML_DB_URL")
    if own and without_password(own) == without_password(db_url):
        db_url = own  # the same database; the node's own URL carries its credentials
    return Settings.from_env(home=os.environ.get("ALLOYML_HOME") or location["home"], db_url=db_url,
                             artifacts=location.get("artifacts"))


def open_platform(location: dict):
    from alloyml.platform.client import Platform

    settings = node_settings(location)
    return Platform(db_url=settings.db_url, home=settings.home, artifacts=settings.artifacts)


def model_folder(location: dict, key: str) -> Path:
    """A folder on this node holding the saved model whose manifest is `key` (see `save_model_artifact`)."""
    return node_settings(location).open_artifacts().get_directory(key)


def save_model_artifact(platform, model, metadata: dict | None = None) -> str:
    """Save an alloyml model (`alloyml.models.saving.save_model`) into the artifact store; returns the key of
    its folder manifest, which any node turns back into a folder with `model_folder`."""
    import tempfile

    from alloyml.models.saving import save_model

    with tempfile.TemporaryDirectory(prefix="alloyml-model-") as scratch:
        directory = save_model(model, Path(scratch) / "model", metadata=metadata)
        return platform.artifacts.put_directory(directory, kind="model")


def record_valuation(platform, result, *, dataset_id: int | None = None, name: str | None = None,
                     flipped: np.ndarray | None = None, metrics: dict | None = None) -> int:
    """One valuation run: params (method, dataset, the method's own params), its data values in one bulk
    write, metrics, and the indices of rows known to be noisy as an artifact (for the dashboard)."""
    params = {"method": result.method, "dataset_id": dataset_id, **result.params}
    if flipped is not None:
        params["flipped_artifact"] = platform.artifacts.put_array(np.asarray(flipped, dtype=np.int64))
    with platform.run("valuation", name=name or result.method, params=params, dataset_id=dataset_id) as run:
        platform.save_data_values(run.id, result)
        run.log_metrics(utility_evaluations=int(result.utility_evaluations), **(metrics or {}))
    return run.id


def register_model_dir(platform, name: str, directory: str | Path, *, metrics: dict | None = None,
                       parents: Sequence[tuple] = (), artifact: str | None = None) -> int:
    """Register an alloyml model saved by `alloyml.models.saving.save_model` (architecture and parameter
    count from its config.json); `parents` are (model_id, role[, weight]) lineage edges. The model's artifact
    is `artifact` (a folder manifest key) when given, else the folder's path."""
    import json

    info = json.loads((Path(directory) / "config.json").read_text())
    model = platform.register_model(name, f"{info['architecture']}:{info['mixer']}/{info['ffn']}",
                                    artifact=artifact or str(directory), n_params=int(info["num_params"]),
                                    metrics=metrics, parents=parents)
    return model.id


def trial_recorder(platform, run_id: int):
    """An automl `on_trial` callback that adds each trial to run `run_id`, numbered in the order they arrive."""
    count = 0

    def record(trial) -> None:
        nonlocal count
        platform.store.add_trial(run_id, count, trial.config, trial.metrics, trial.cost, trial.seconds, trial.status)
        count += 1

    return record


# Key, in a stored cascade's plan dict, of the artifact holding the responses the plan was fitted on.
TRAINING_RESPONSES = "training_responses"


def save_cascade_plan(platform, name: str, plan, responses, budget: float):
    """Store a fitted cascade plan as the next version of `name`, with each stage's mean cost per query.
    The responses it was fitted on are kept as a JSON artifact (the long table), referenced from the stored
    plan under `TRAINING_RESPONSES`, so `cascade-refit` can refit on them plus the labelled request log."""
    point = plan.point
    costs = [float(responses.cost[:, responses.model_index(m)].mean()) for m in point.models]
    frame = responses.to_frame()
    table = {column: frame[column].tolist() for column in frame.columns}
    stored_plan = {**plan.model_dump(), TRAINING_RESPONSES: platform.artifacts.put_json(table, kind="responses")}
    return platform.store.save_cascade(name, point.models, point.thresholds, costs, budget, plan=stored_plan)


def training_responses(platform, cascade):
    """The responses stored cascade version `cascade` was fitted on (a long-table DataFrame), or None for a
    version saved without them (before they were kept, or written by hand)."""
    import pandas as pd

    key = cascade.plan.get(TRAINING_RESPONSES)
    return None if key is None else pd.DataFrame(platform.artifacts.get_json(key))


class StoreRequestLog:
    """The request-log callback: writes batches of request records for cascade row `cascade_id`. It runs
    in the Serve replica, so it holds only settings and opens its own client there."""

    def __init__(self, cascade_id: int, db_url: str, home: str):
        self.cascade_id = cascade_id
        self.db_url = db_url
        self.home = home
        self._platform = None

    def __call__(self, records: list[dict]) -> None:
        from alloyml.platform import entities as e
        from alloyml.platform.orm import utcnow

        if self._platform is None:  # completed from the replica node's environment, like a step's store
            self._platform = open_platform({"db_url": self.db_url, "home": self.home})
        now = utcnow()
        self._platform.store.log_cascade_requests(self.cascade_id, [
            e.CascadeRequest(r["stage_reached"], r["cost"], r["latency_ms"], r["scores"], r["frontier_point"], now,
                             request_id=r.get("request_id"), query_id=r.get("query_id"), query=r.get("query"),
                             answer=r.get("answer"), model=r.get("model"), score=r.get("score"),
                             calls=r.get("calls", []), errors=r.get("errors", []))
            for r in records
        ])

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_platform"} | {"_platform": None}


def served_rows(platform, name: str):
    """The labelled served requests of cascade `name` (every version) as a long responses table: one row per
    labelled answer, with the cost of that stage's call. The log is sparse (a request carries the answers of
    the stages it reached only). Raises InvalidInputError when no request of `name` is labelled."""
    import pandas as pd

    from alloyml.errors import InvalidInputError
    from alloyml.routing.responses import COLUMNS

    rows = []
    for request in platform.store.labelled_cascade_requests(name):
        calls = {c["model"]: c for c in request.calls}
        for model, correct in request.labels.items():
            # A writer that logged no stage calls left only the returned answer and the total cost.
            call = calls.get(model) or {"answer": request.answer, "cost": request.cost}
            rows.append((request.request_id, request.query, model, call["answer"], correct, call["cost"]))
    if not rows:
        raise InvalidInputError(f"cascade {name!r} has no labelled requests; attach labels with "
                                f"`alloyml cascade label {name} FILE` first")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def served_responses(platform, name: str, missing: str = "error"):
    """Logged responses built from the labelled served requests of cascade `name` (`served_rows`);
    `missing` is `load_responses`' policy for the log's sparsity."""
    from alloyml.routing.responses import load_responses

    return load_responses(served_rows(platform, name), missing=missing)
