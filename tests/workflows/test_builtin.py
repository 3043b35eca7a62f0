"""The built-in `sklearn-train-score` workflow, recorded end to end, against scikit-learn run directly; and
the CLI (`run`, `list`, `show`, `builtins`) on it."""

from __future__ import annotations

import numpy as np
import pytest

from alloyml.workflows import submit
from alloyml.workflows.builtin import builtins, get_builtin
from alloyml.workflows.builtin.sklearn_train_score import make_pipeline, restore_pipeline

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
