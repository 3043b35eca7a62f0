"""Every store operation, on SQLite and on the PostgreSQL server (the `db_url` fixture runs both)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alloyml.errors import AlloyError, ConfigError, InvalidInputError, NotFoundError, SchemaOutdatedError
from alloyml.platform import entities as e
from alloyml.platform.client import Platform
from alloyml.platform.sql_store import SqlStore


@pytest.fixture
def platform(db_url, tmp_path):
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as p:
        yield p


def test_unmigrated_database_is_refused_with_the_upgrade_hint(db_url, tmp_path):
    with pytest.raises(SchemaOutdatedError, match="alloyml db upgrade"):
        Platform(db_url=db_url, home=tmp_path)
    Platform(db_url=db_url, home=tmp_path, upgrade=True).close()
    Platform(db_url=db_url, home=tmp_path).close()  # migrated now: accepted


def test_fresh_embedded_default_is_created_at_head(alloy_home):
    with Platform() as platform:
        assert platform.settings.db_url.endswith(str(alloy_home / "alloyml.db"))
        assert platform.store.list_runs() == []
    assert (alloy_home / "alloyml.db").is_file()


@pytest.mark.parametrize("url", ["not a url", "oracle://x@y/z", "sqlite://"])
def test_malformed_db_url_names_the_url(url, tmp_path):
    with pytest.raises(ConfigError, match="ALLOYML_DB_URL"):
        Platform(db_url=url, home=tmp_path)


def test_runs_round_trip_and_order(platform):
    store = platform.store
    first = store.start_run("train", name="a", params={"lr": 0.1})
    second = store.start_run("valuation", params={"k": 5})
    store.log_metrics(first.id, {"loss": 1.5})
    done = store.finish_run(first.id, metrics={"acc": 0.9})
    assert done.status == "done" and done.metrics == {"loss": 1.5, "acc": 0.9} and done.seconds >= 0
    assert [r.id for r in store.list_runs()] == [second.id, first.id]
    assert [r.id for r in store.list_runs(kind="train")] == [first.id]
    assert store.run_counts() == {("train", "done"): 1, ("valuation", "running"): 1}
    assert isinstance(store.get_run(first.id), e.Run)
    with pytest.raises(NotFoundError, match="run id 999"):
        store.get_run(999)
    with pytest.raises(InvalidInputError, match="status 'weird'"):
        store.finish_run(first.id, status="weird")


def test_run_context_records_failure_with_traceback(platform):
    with pytest.raises(RuntimeError), platform.run("train", name="boom") as run:
        raise RuntimeError("exploded in step 3")
    stored = platform.store.get_run(run.id)
    assert stored.status == "failed" and "exploded in step 3" in stored.error


def test_data_values_queries_match_numpy(platform):
    rng = np.random.default_rng(1)
    n = 5_000
    values, stderr, counts = rng.normal(size=n), rng.random(n), rng.integers(1, 50, n)
    indices = rng.permutation(np.arange(10, 10 + n))  # arbitrary point ids, unsorted
    run = platform.store.start_run("valuation")
    assert platform.store.write_data_values(run.id, values, stderr, counts, indices) == n
    order = np.argsort(values)
    low = platform.store.lowest_values(run.id, 25)
    np.testing.assert_array_equal(low.indices, indices[order[:25]])
    np.testing.assert_allclose(low.values, values[order[:25]])
    np.testing.assert_allclose(low.stderr, stderr[order[:25]])
    np.testing.assert_array_equal(low.counts, counts[order[:25]])
    high = platform.store.highest_values(run.id, 10)
    np.testing.assert_array_equal(high.indices, indices[order[::-1][:10]])
    probe = indices[[7, 3, 4000, 12]]
    at = platform.store.values_at(run.id, probe)
    np.testing.assert_array_equal(at.indices, probe)
    np.testing.assert_allclose(at.values, values[[7, 3, 4000, 12]])
    everything = platform.store.all_values(run.id)
    np.testing.assert_array_equal(everything.indices, np.sort(indices))
    for bins in (50, 7):
        hist, edges = platform.store.value_histogram(run.id, bins)
        expected, expected_edges = np.histogram(values, bins=bins)
        np.testing.assert_array_equal(hist, expected)
        np.testing.assert_allclose(edges, expected_edges)
    summary = platform.store.value_summary(run.id)
    assert summary["n"] == n and summary["min"] == pytest.approx(values.min())
    with pytest.raises(NotFoundError, match="point indices \\[5\\]"):
        platform.store.values_at(run.id, [5])


def test_save_data_values_keeps_the_point_ids(platform):
    """Platform.save_data_values and workflows' record_valuation store a result for rows 10, 20, 30 under
    10, 20, 30 (save_data_values used to store 0, 1, 2)."""
    from alloyml.valuation.result import ValuationResult
    from alloyml.workflows.recording import record_valuation

    ids = np.array([30, 10, 20])
    result = ValuationResult(values=[0.3, 0.1, 0.2], stderr=[0.03, 0.01, 0.02], counts=[3, 1, 2],
                             method="loo", indices=ids)
    direct = platform.store.start_run("valuation")
    assert platform.save_data_values(direct.id, result) == 3
    recorded = record_valuation(platform, result)
    for run_id in (direct.id, recorded):
        stored = platform.store.all_values(run_id)
        np.testing.assert_array_equal(stored.indices, [10, 20, 30])
        np.testing.assert_allclose(stored.values, [0.1, 0.2, 0.3])
        np.testing.assert_array_equal(stored.counts, [1, 2, 3])
        np.testing.assert_allclose(platform.store.values_at(run_id, [20]).values, [0.2])


def test_lowest_and_highest_beyond_the_ranked_extremes(platform, monkeypatch):
    from alloyml.platform import sql_store

    monkeypatch.setattr(sql_store, "RANKED_EXTREMES", 30)  # only 30 ranks at each end are stored
    values = np.random.default_rng(2).normal(size=500)
    run = platform.store.start_run("valuation")
    platform.store.write_data_values(run.id, values)
    order = np.argsort(values)
    for k in (10, 30, 31, 200):
        np.testing.assert_array_equal(platform.store.lowest_values(run.id, k).indices, order[:k])
        np.testing.assert_array_equal(platform.store.highest_values(run.id, k).indices, order[::-1][:k])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"values": [0.1, float("nan"), 0.3]}, "NaN or inf at positions \\[1\\]"),
        ({"values": [0.1, 0.2], "stderr": [0.1]}, "stderr has shape \\(1,\\); expected \\(2,\\)"),
        ({"values": [0.1, 0.2], "counts": [1, 2, 3]}, "counts has shape"),
        ({"values": [[0.1]]}, "1-d array"),
        ({"values": [0.1, 0.2], "indices": [4, 4]}, "duplicates"),
    ],
)
def test_bad_value_arrays_are_refused_and_nothing_is_written(platform, kwargs, message):
    run = platform.store.start_run("valuation")
    with pytest.raises(InvalidInputError, match=message):
        platform.store.write_data_values(run.id, **kwargs)
    assert len(platform.store.all_values(run.id)) == 0
    assert platform.store.value_summary(run.id) is None


def test_values_for_unknown_run_and_second_write(platform):
    with pytest.raises(NotFoundError, match="run id 4242"):
        platform.store.write_data_values(4242, np.ones(3))
    run = platform.store.start_run("valuation")
    platform.store.write_data_values(run.id, np.arange(3.0))
    with pytest.raises(InvalidInputError, match="already has data values"):
        platform.store.write_data_values(run.id, np.arange(5.0))
    np.testing.assert_array_equal(platform.store.all_values(run.id).values, np.arange(3.0))


def test_models_lineage_and_merges(platform):
    store = platform.store
    base = platform.register_model("base", "gla", tensors={"w": torch.ones(3, 4)})
    assert base.n_params == 12
    a = store.add_model("task-a", "gla", parents=[e.LineageEdge(0, base.id, "fine-tune")])
    b = store.add_model("task-b", "gla", parents=[e.LineageEdge(0, base.id, "fine-tune")])
    merged = platform.register_model("merged", "gla", parents=[(a.id, "merge input", 0.5), (b.id, "merge input", 0.5)])
    store.update_model_metrics(merged.id, {"task_a": 0.8})
    assert store.get_model(merged.id).metrics == {"task_a": 0.8}
    ancestry = store.lineage_edges(merged.id)
    assert {(x.child_id, x.parent_id) for x in ancestry} == {(merged.id, a.id), (merged.id, b.id),
                                                               (a.id, base.id), (b.id, base.id)}
    record = store.record_merge("ties", {"density": 0.5}, [e.MergeInput(a.id, 0.5), e.MergeInput(b.id, 0.5)],
                                merged.id)
    assert store.list_merges()[0].inputs == [e.MergeInput(a.id, 0.5), e.MergeInput(b.id, 0.5)]
    assert record.config == {"density": 0.5}
    assert torch.equal(platform.artifacts.get_tensors(base.artifact)["w"], torch.ones(3, 4))


def test_failed_writes_leave_nothing_behind(platform):
    store = platform.store
    real = store.add_model("real", "mlp")
    with pytest.raises(NotFoundError, match="merge input model id 777"):
        store.record_merge("linear", {}, [e.MergeInput(real.id, 1.0), e.MergeInput(777, 1.0)], real.id)
    assert store.list_merges() == []
    with pytest.raises(NotFoundError, match="parent model id 888"):
        store.add_model("orphan", "mlp", parents=[e.LineageEdge(0, 888, "base")])
    assert [m.name for m in store.list_models()] == ["real"]
    with pytest.raises(InvalidInputError, match="lineage role 'cousin'"):
        store.add_model("x", "mlp", parents=[e.LineageEdge(0, real.id, "cousin")])
    assert len(store.list_models()) == 1


def test_datasets_round_trip(platform):
    x = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    dataset = platform.register_dataset("tiny", x, y, columns=["a", "b", "c"])
    loaded_x, loaded_y = platform.load_dataset(dataset.id)
    np.testing.assert_array_equal(loaded_x, x)
    np.testing.assert_array_equal(loaded_y, y)
    assert dataset.schema["columns"] == ["a", "b", "c"] and dataset.n_rows == 4
    again = platform.register_dataset("tiny", x, y, version="2", columns=["a", "b", "c"])
    assert again.fingerprint == dataset.fingerprint  # same content, same fingerprint
    with pytest.raises(InvalidInputError, match="y has 3 rows, x has 4"):
        platform.register_dataset("bad", x, y[:3])


def test_cascades_versions_and_requests(platform):
    store = platform.store
    v1 = store.save_cascade("qa", ["small", "big"], [0.7], [1.0, 10.0], budget=3.0,
                            plan={"frontier": [{"cost": 1, "accuracy": 0.5}]})
    v2 = store.save_cascade("qa", ["small", "mid", "big"], [0.6, 0.8], [1.0, 3.0, 10.0], budget=4.0)
    assert (v1.version, v2.version) == (1, 2)
    assert store.get_cascade("qa").id == v2.id and store.get_cascade("qa", 1).id == v1.id
    store.log_cascade_requests(v2.id, [e.CascadeRequest(0, 1.0, 2.5, [0.9]), e.CascadeRequest(2, 14.0, 30.0)])
    logged = store.cascade_requests(v2.id)
    assert sorted(r.stage_reached for r in logged) == [0, 2]
    with pytest.raises(InvalidInputError, match="one cost per stage"):
        store.save_cascade("bad", ["a", "b"], [0.5], [1.0], budget=1.0)
    with pytest.raises(NotFoundError, match="cascade 'nope'"):
        store.get_cascade("nope")


def test_workflows_steps_and_trials(platform):
    store = platform.store
    wf = store.create_workflow("two-step", {"n": 3}, {"version": 1},
                               [{"name": "train"}, {"name": "score", "depends_on": ["train"]}])
    store.update_step(wf.id, "train", increment_attempts=True, state="done",
                      output_artifact="json/" + "a" * 64 + ".json")
    steps = {s.name: s for s in store.workflow_steps(wf.id)}
    assert steps["train"].state == "done" and steps["train"].attempts == 1
    assert steps["score"].depends_on == ["train"] and steps["score"].state == "pending"
    assert store.update_workflow(wf.id, status="done").status == "done"
    with pytest.raises(InvalidInputError, match="cannot set \\['color'\\]"):
        store.update_step(wf.id, "train", color="red")
    with pytest.raises(NotFoundError, match="no step named 'nope'"):
        store.update_step(wf.id, "nope", state="done")
    with pytest.raises(InvalidInputError, match="duplicate step names"):
        store.create_workflow("dup", {}, {}, [{"name": "a"}, {"name": "a"}])
    run = store.start_run("tune")
    store.add_trial(run.id, 0, {"lr": 0.1}, {"acc": 0.7}, cost=12.0, seconds=1.5)
    store.add_trial(run.id, 1, {"lr": 0.01}, {"acc": 0.8}, cost=10.0, seconds=1.0)
    assert [t.config["lr"] for t in store.list_trials(run.id)] == [0.1, 0.01]


def test_errors_are_alloy_errors():
    assert issubclass(SchemaOutdatedError, AlloyError) and issubclass(NotFoundError, AlloyError)


def test_store_never_returns_orm_rows(platform):
    run = platform.store.start_run("train")
    assert type(run).__module__ == "alloyml.platform.entities"
    assert isinstance(platform.store, SqlStore)


def test_non_finite_metrics_are_stored_as_null(platform):
    run = platform.store.start_run("tune", params={"lr": float("nan")})
    platform.store.log_metrics(run.id, {"loss": float("inf"), "curve": [1.0, float("nan")]})
    trial = platform.store.add_trial(run.id, 0, {"t": 1.0}, {"utility": float("nan")})
    stored = platform.store.get_run(run.id)
    assert stored.params == {"lr": None} and stored.metrics == {"loss": None, "curve": [1.0, None]}
    assert platform.store.list_trials(run.id)[0].metrics == {"utility": None} and trial.number == 0


def test_metric_history_and_latest_value(platform):
    store = platform.store
    run = store.start_run("train")
    losses = np.random.default_rng(3).random(50)
    for step in (0, 2, 1):  # out of order: the latest value is the highest step's
        store.log_metrics(run.id, {"loss": float(losses[step]), "lr": np.float32(0.5)}, step=step)
    store.log_metrics(run.id, {"curve": [1.0, float("nan")], "chosen": "ties"})
    assert store.get_run(run.id).metrics == {"loss": losses[2], "lr": 0.5, "curve": [1.0, None], "chosen": "ties"}
    history = store.metric_history(run.id, "loss")
    np.testing.assert_array_equal(history.steps, [0, 1, 2])
    np.testing.assert_allclose(history.values, losses[[0, 1, 2]])
    assert len(store.metric_history(run.id, "chosen")) == 0  # only numbers have a history
    series = store.start_run("train")
    curve = losses.copy()
    curve[7] = np.inf
    assert store.log_metric_series(series.id, "loss", curve, steps=np.arange(0, 100, 2)) == 50
    history = store.metric_history(series.id, "loss")
    np.testing.assert_array_equal(history.steps, np.arange(0, 100, 2))
    expected = curve.copy()
    expected[7] = np.nan  # inf is stored as NULL and read back as NaN
    np.testing.assert_array_equal(history.values, expected)
    assert store.get_run(series.id).metrics == {"loss": curve[-1]}
    store.log_metrics(series.id, {"loss": 9.0}, step=3)  # an older step does not replace the latest
    assert store.get_run(series.id).metrics["loss"] == curve[-1]
    with pytest.raises(InvalidInputError, match="metric step -1"):
        store.log_metrics(run.id, {"loss": 1.0}, step=-1)


def test_run_search_matches_a_python_filter(platform):
    store = platform.store
    rng = np.random.default_rng(5)
    expected = []
    for i in range(30):
        method = ("knn_shapley", "data_oob", "loo")[i % 3]
        run = store.start_run("valuation" if i % 4 else "train", name=f"r{i}", params={"method": method, "k": i})
        auc = float(rng.random())
        store.log_metrics(run.id, {"noise_auc": auc, "label": "text"})
        store.finish_run(run.id, status="done" if i % 5 else "failed")
        expected.append((run.id, method, auc, "done" if i % 5 else "failed", "valuation" if i % 4 else "train"))
    store.log_metrics(expected[0][0], {"noise_auc": float("nan")})  # NaN never matches a comparison

    def ids(text):
        return sorted(r.id for r in store.list_runs(limit=1000, filter=text))

    def brute(pred):
        return sorted(i for i, method, auc, status, kind in expected[1:] if pred(method, auc, status, kind))

    assert ids("metrics.noise_auc > 0.5") == brute(lambda m, a, s, k: a > 0.5)
    assert ids("metrics.noise_auc <= 0.3 AND params.method = 'data_oob'") == brute(
        lambda m, a, s, k: a <= 0.3 and m == "data_oob")
    assert ids("params.method != 'loo' and status = 'done' and kind = \"valuation\"") == brute(
        lambda m, a, s, k: m != "loo" and s == "done" and k == "valuation")
    assert ids("metrics.missing > 0") == [] and ids("metrics.label > 0") == []
    assert ids("metrics.noise_auc >= 0") == brute(lambda *a: True)
    assert ids("params.k > 3") == sorted(i for i, *_ in expected if int(store.get_run(i).params["k"]) > 3)
    for bad in ("metrics.x >", "params.k LIKE 3", "owner = 'me'", "metrics.x = 'a'", "1; DROP TABLE run"):
        with pytest.raises(InvalidInputError, match="run filter"):
            store.list_runs(filter=bad)
