"""Built-in workflows record their results in the store: `sklearn-train-score` end to end against
scikit-learn run directly, and the CLI (`run`, `list`, `show`, `builtins`) on it; the valuation and merge
workflows against the libraries called by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from alloyml.platform.client import Platform
from alloyml.valuation import flip_labels, knn_shapley
from alloyml.workflows import submit
from alloyml.workflows.builtin import builtins, get_builtin
from alloyml.workflows.builtin.sklearn_train_score import make_pipeline, restore_pipeline
from alloyml.workflows.recording import store_location

pytestmark = pytest.mark.ray


def _data(seed: int = 0):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=seed)
    return x[:200], y[:200], x[200:], y[200:]


def test_registry_lists_the_builtin_and_refuses_unknown_names():
    assert "sklearn-train-score" in builtins()
    assert get_builtin("sklearn-train-score").inputs == ["x_test", "x_train", "y_test", "y_train"]
    with pytest.raises(Exception, match="known: \\["):
        get_builtin("no-such-workflow")


def test_sklearn_train_score_matches_sklearn(platform, ray_session):
    from sklearn.metrics import accuracy_score, log_loss

    x_train, y_train, x_test, y_test = _data()
    handle = submit(platform, get_builtin("sklearn-train-score").build(),
                    {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test})
    result = handle.result(timeout=180)
    reference = make_pipeline(C=1.0, max_iter=500).fit(x_train, y_train)
    proba = reference.predict_proba(x_test)
    assert result["n_test"] == 100
    assert result["accuracy"] == pytest.approx(accuracy_score(y_test, reference.predict(x_test)), abs=1e-12)
    assert result["log_loss"] == pytest.approx(log_loss(y_test, proba), rel=1e-9)
    # the stored model (arrays only) rebuilds the same fitted pipeline
    restored = restore_pipeline(handle.output("train_pipeline"))
    np.testing.assert_allclose(restored.predict_proba(x_test), proba, rtol=1e-10)
    assert [s.state for s in handle.steps()] == ["done", "done"]
    record = platform.store.get_workflow(handle.id)
    assert record.status == "done" and record.result_artifact == handle.steps()[1].output_artifact
    assert set(record.inputs) == {"x_train", "y_train", "x_test", "y_test"}  # stored as .npy references
    assert all(platform.artifacts.exists(v["__array__"]) for v in record.inputs.values())


def test_cli_run_list_show(alloy_home, tmp_path, ray_session, capsys, monkeypatch):
    from alloyml.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # rich folds long cells on a narrow terminal

    x_train, y_train, x_test, y_test = _data(seed=1)
    args = []
    for name, array in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        np.save(tmp_path / f"{name}.npy", array)
        args += ["--input", f"{name}=@{tmp_path / f'{name}.npy'}"]

    def cli(*argv):
        assert main(["workflow", *argv]) == 0
        return capsys.readouterr().out

    out = cli("run", "sklearn-train-score", *args)
    assert "workflow 1 submitted" in out and "accuracy" in out
    reference = make_pipeline(C=1.0, max_iter=500).fit(x_train, y_train)
    accuracy = float((reference.predict(x_test) == y_test).mean())
    assert f"'accuracy': {accuracy}" in out
    listing = cli("list")
    assert "sklearn-train-score" in listing and "done" in listing
    shown = cli("show", "1")
    assert "train_pipeline" in shown and "score_pipeline" in shown and "2/2 steps done" in shown
    assert "sklearn-train-score" in cli("builtins")
    assert main(["workflow", "run", "sklearn-train-score", "--input", "x_train=[1"]) == 2  # bad JSON: refused


def test_valuation_workflow_records_knn_shapley_values(alloy_home, ray_session):
    x, y = load_breast_cancer(return_X_y=True)
    x_train, y_train, x_test, y_test = x[:300], y[:300], x[300:400], y[300:400]
    noisy, flipped = flip_labels(y_train, 0.1, seed=0)
    with Platform() as platform:
        handle = submit(platform, get_builtin("valuation").build(), {
            "store": store_location(platform), "x_train": x_train, "y_train": noisy, "x_test": x_test,
            "y_test": y_test, "method": "knn_shapley", "samples": 0, "seed": 0, "flipped": flipped})
        result = handle.result(timeout=300)
        stored = platform.store.all_values(result["run_id"])
        run = platform.store.get_run(result["run_id"])
    scaler = StandardScaler().fit(x_train)  # the pipeline's preprocessing, applied by hand
    expected = knn_shapley(scaler.transform(x_train), noisy, scaler.transform(x_test), y_test, k=5)
    np.testing.assert_allclose(stored.values, expected.values, rtol=1e-6, atol=1e-12)
    assert run.params["method"] == "pipeline_knn_shapley" and run.metrics["noise_auc"] > 0.9
    np.testing.assert_array_equal(result["lowest"], expected.lowest(10))


def test_merge_workflow_records_the_merge_and_lineage(alloy_home, ray_session, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(0)
    paths = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        save_file({"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
                  str(folder / "model.safetensors"))
        paths[name] = str(folder)
    config = {"merge_method": "linear", "models": [{"model": paths["a"], "parameters": {"weight": 0.25}},
                                                   {"model": paths["b"], "parameters": {"weight": 0.75}}]}
    with Platform() as platform:
        known = platform.register_model("a", "mlp", artifact=paths["a"])  # already registered: reused
        out = submit(platform, get_builtin("merge").build(), {"store": store_location(platform), "config": config,
                                                             "out_dir": str(tmp_path / "merged")}).result(timeout=300)
        [merge] = platform.store.list_merges()
        edges = platform.store.lineage_edges(out["model_id"])
        models = {m.id: m for m in platform.store.list_models()}
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    merged = {}
    for shard in (tmp_path / "merged").glob("*.safetensors"):
        merged.update(load_file(str(shard)))
    for key in ("w", "b"):  # a weighted average, normalised by the weights' sum (1.0 here)
        torch.testing.assert_close(merged[key], 0.25 * a[key] + 0.75 * b[key])
    assert merge.method == "linear" and merge.output_model_id == out["model_id"]
    assert {(i.model_id, i.weight) for i in merge.inputs} == {(known.id, 0.25), (merge.inputs[1].model_id, 0.75)}
    assert {(e.parent_id, e.weight) for e in edges} == {(i.model_id, i.weight) for i in merge.inputs}
    assert models[merge.inputs[1].model_id].artifact == paths["b"]
