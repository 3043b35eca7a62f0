"""A merge search run by `alloyml tune merge` is shown on the dashboard's AutoML page like every other
search: its searched weights as columns and its best score, read back from the store independently."""

from __future__ import annotations

import numpy as np

from alloyml.cli import main
from alloyml.ui.analysis import trial_params
from tests.merging.test_merge_search_cli import _search_file
from tests.ui.test_pages import frame_with, metrics, render


def test_trial_params_flatten_a_merge_config():
    config = {"merge_method": "ties", "base_model": "/m/base",
              "models": [{"model": "/m/a", "parameters": {"weight": [0.1, 0.9], "density": 0.5}},
                         {"model": "/x/b", "parameters": {"weight": 0.3}}],
              "parameters": {"lambda": 1.2}}
    assert trial_params(config) == {"merge_method": "ties", "a.weight[0]": 0.1, "a.weight[1]": 0.9,
                                    "a.density": 0.5, "b.weight": 0.3, "lambda": 1.2}
    assert trial_params({"k": 3}) == {"k": 3}


def test_automl_page_shows_a_merge_search(alloy_home, tmp_path):
    from alloyml.platform.client import Platform

    assert main(["tune", "merge", _search_file(tmp_path, layer_groups=2, n_trials=4, popsize=4)]) == 0
    with Platform() as platform:
        [run] = platform.store.list_runs(kind="tune")
        trials = platform.store.list_trials(run.id)
    at = render("automl")
    scores = [t.metrics["score"] for t in trials]
    shown = metrics(at)
    assert shown["Trials"] == "4" and shown["Best score"] == f"{max(scores):.4g}"
    assert shown["Best trial"] == str(int(np.argmax(scores)))
    table = frame_with(at, "param.a.weight[1]")
    expected = [[m["parameters"]["weight"] for m in t.config["models"]] for t in trials]
    assert table[["param.a.weight[0]", "param.a.weight[1]", "param.b.weight[0]", "param.b.weight[1]"]].values.tolist() \
        == [[*a, *b] for a, b in expected]
    assert table["metric.score"].tolist() == scores
    assert run.params["search"] == "merge"
