"""One table of bad inputs, run against SQLite and PostgreSQL: each is refused before the database with the
same `InvalidInputError` naming the input, and nothing is written. (SQLite used to store NaN counts as
-2**63 and over-long names as they were; PostgreSQL raised raw driver errors.)"""

from __future__ import annotations

import numpy as np
import pytest

from alloyml.errors import InvalidInputError, StoreError
from alloyml.platform import entities as e
from alloyml.platform.client import Platform

LONG = "x" * 201

CASES = [
    ("NaN count", lambda s, r: s.write_data_values(r, [0.1, 0.2], counts=[1, float("nan")]), "counts must be whole"),
    ("count >= 2**31", lambda s, r: s.write_data_values(r, [0.1, 0.2], counts=[1, 2**31]),
     r"counts .*\[0, 2147483648\)"),
    ("negative count", lambda s, r: s.write_data_values(r, [0.1], counts=[-1]), "counts must be whole"),
    ("fractional index", lambda s, r: s.write_data_values(r, [0.1], indices=[1.5]), "indices must be whole"),
    ("string values", lambda s, r: s.write_data_values(r, ["a", "b"]), "values must be numbers"),
    ("string counts", lambda s, r: s.write_data_values(r, [0.1], counts=["many"]), "counts must be numbers"),
    ("over-long kind", lambda s, r: s.start_run("k" * 41), "run.kind is 41 characters long; at most 40"),
    ("over-long run name", lambda s, r: s.start_run("train", name=LONG), "run.name is 201 characters"),
    ("non-string name", lambda s, r: s.start_run("train", name=5), "run.name must be a string"),
    ("object in params", lambda s, r: s.start_run("train", params={"f": object()}), r"run.params\['f'\]"),
    ("over-long metric name", lambda s, r: s.log_metrics(r, {LONG: 1.0}), "metric name"),
    ("object metric", lambda s, r: s.log_metrics(r, {"m": object()}), r"metrics\['m'\] is a object"),
    ("metrics not a dict", lambda s, r: s.log_metrics(r, [("m", 1.0)]), "metrics must be a dict"),
    ("bool step", lambda s, r: s.log_metrics(r, {"m": 1.0}, step=True), "metric step True"),
    ("over-long model name", lambda s, r: s.add_model(LONG, "gla"), "model.name is 201"),
    ("NaN parameter count", lambda s, r: s.add_model("m", "gla", n_params=float("nan")), "model.n_params must be an"),
    ("huge parameter count", lambda s, r: s.add_model("m", "gla", n_params=2**64), "model.n_params=.* out of range"),
    ("over-long dataset version", lambda s, r: s.add_dataset("d", "v" * 65, 3, {}, "f" * 64), "dataset.version"),
    ("over-long cascade name", lambda s, r: s.save_cascade(LONG, ["a"], [], [1.0], 1.0), "cascade.name is 201"),
    ("NaN budget", lambda s, r: s.save_cascade("c", ["a"], [], [1.0], float("nan")), "cascade.budget is nan"),
    ("string stage index", lambda s, r: s.log_cascade_requests(1, [e.CascadeRequest("0", 1.0, 1.0)]),
     "cascade_request.stage_reached must be an integer"),
    ("over-long workflow name", lambda s, r: s.create_workflow(LONG, {}, {}, []), "workflow.name is 201"),
    ("over-long step name", lambda s, r: s.create_workflow("w", {}, {}, [{"name": LONG}]), "workflow_step.name"),
    ("string trial number", lambda s, r: s.add_trial(r, "1", {}), "trial.number must be an integer"),
]


@pytest.fixture
def store(db_url, tmp_path):
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as platform:
        platform.store.save_cascade("base", ["a"], [], [1.0], 1.0)
        yield platform.store


def _counts(store, run_id):
    return (len(store.list_runs(limit=1000)), len(store.list_models()), len(store.list_datasets()),
            len(store.list_cascades()), len(store.list_workflows()), len(store.list_trials(run_id)),
            len(store.cascade_requests(1)), store.get_run(run_id).metrics, len(store.all_values(run_id)))


@pytest.mark.parametrize("call, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_alike_and_nothing_is_written(store, call, message):
    run_id = store.start_run("valuation").id
    before = _counts(store, run_id)
    with pytest.raises(InvalidInputError, match=message):
        call(store, run_id)
    assert _counts(store, run_id) == before


def test_numpy_scalars_and_nan_metrics_are_stored_alike(store):
    run = store.start_run("train", params={"lr": np.float32(0.5), "n": np.int64(3)})
    store.log_metrics(run.id, {"acc": np.float32(0.25), "loss": float("nan"), "n": np.int32(7)})
    assert store.get_run(run.id).params == {"lr": 0.5, "n": 3}
    assert store.get_run(run.id).metrics == {"acc": 0.25, "loss": None, "n": 7}
    model = store.add_model("m", "gla", n_params=np.int64(10), metrics={"acc": float("nan"), "f1": np.float64(0.5)})
    assert store.get_model(model.id).metrics == {"acc": None, "f1": 0.5} and store.get_model(model.id).n_params == 10
    assert np.isnan(store.metric_history(run.id, "loss").values).all()


def test_a_raw_driver_error_becomes_a_store_error(store, monkeypatch):
    from alloyml.platform import sql_store

    def broken(connection, *args, **kwargs):  # what a driver raises from the bulk path's DBAPI cursor
        cursor = connection.connection.driver_connection.cursor()
        cursor.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(sql_store, "_bulk_insert", broken)
    run = store.start_run("valuation")
    with pytest.raises(StoreError, match="rolled back"):
        store.write_data_values(run.id, [0.1, 0.2])
    assert store.value_summary(run.id) is None
