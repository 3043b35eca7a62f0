"""`alloyml tune merge`: a merge search from a YAML file, each merge evaluated stored as a trial of a "tune"
run, with the scores recomputed here from the stored configs by the closed form of task arithmetic."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from alloyml.cli import main
from alloyml.errors import ConfigError
from alloyml.merging.search_config import load_merge_search_config

VALUES = {"base": 0.0, "a": 1.0, "b": 2.0}


def _checkpoints(tmp_path) -> dict[str, str]:
    paths = {}
    for name, value in VALUES.items():
        folder = tmp_path / name
        folder.mkdir()
        save_file({"w": torch.full((3,), value)}, str(folder / "model.safetensors"))
        paths[name] = str(folder)
    return paths


def _search_file(tmp_path, **overrides) -> str:
    paths = _checkpoints(tmp_path)
    template = {"merge_method": "task_arithmetic", "base_model": paths["base"],
                "models": [{"model": paths["a"]}, {"model": paths["b"]}]}
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(template))
    config = {"template": "template.yaml", "metric": "tests.merging._search_metric:closeness", "search": ["weight"],
              "layer_groups": 1, "n_trials": 6, "popsize": 3, "parallel": False, **overrides}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _closed_form_score(config: dict) -> float:
    """Task arithmetic on one tensor: w = base + Σ weight_m (w_m - base); the metric is -Σ (w - 1.5)²."""
    merged = VALUES["base"] + sum(m["parameters"]["weight"] * (VALUES[m["model"].rsplit("/", 1)[-1]] - VALUES["base"])
                                  for m in config["models"])
    return -3 * (merged - 1.5) ** 2


def test_every_merge_evaluated_is_a_stored_trial_with_its_closed_form_score(alloy_home, tmp_path, capsys):
    from alloyml.platform.client import Platform

    out = tmp_path / "best.yaml"
    assert main(["tune", "merge", _search_file(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with Platform() as platform:
        [run] = platform.store.list_runs(kind="tune")
        trials = platform.store.list_trials(run.id)

    assert run.status == "done" and run.params["search"] == "merge" and run.params["method"] == "task_arithmetic"
    assert [t.number for t in trials] == list(range(6)) and {t.status for t in trials} == {"completed"}
    for t in trials:
        assert t.metrics["score"] == pytest.approx(_closed_form_score(t.config), rel=1e-5, abs=1e-9)
        assert t.cost == 1.0 and t.seconds > 0
    best = max(trials, key=lambda t: t.metrics["score"])
    assert run.metrics["best_score"] == best.metrics["score"] and run.metrics["trials"] == 6
    written = yaml.safe_load(out.read_text())
    assert run.metrics["best_config"] == written
    assert [m["parameters"]["weight"] for m in written["models"]] == [
        m["parameters"]["weight"] for m in best.config["models"]
    ]
    assert f"{best.metrics['score']:.4f}" in printed


def test_a_slices_template_search_is_stored_like_any_other(alloy_home, tmp_path, capsys):
    """Each slice gets its own weights; every trial is a stored trial whose score is the closed form of
    its stored config (one tensor `w`, outside the layer stack: merged with the last slice's weights)."""
    from alloyml.platform.client import Platform
    from alloyml.ui.analysis import trial_params

    paths = _checkpoints(tmp_path)
    template = {"merge_method": "task_arithmetic", "base_model": paths["base"], "layer_pattern": "layers.{layer}.",
                "slices": [{"sources": [{"model": paths[m], "layer_range": [0, 1]} for m in VALUES]}] * 2}
    for name in VALUES:  # one layer tensor each, so the slices have a layer to take
        save_file({"w": torch.full((3,), VALUES[name]), "layers.0.x": torch.zeros(2)},
                  str(tmp_path / name / "model.safetensors"))
    config = {"template": template, "metric": "tests.merging._search_metric:closeness", "search": ["weight"],
              "layer_groups": 1, "n_trials": 4, "popsize": 4, "parallel": False}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(config))
    assert main(["tune", "merge", str(tmp_path / "search.yaml")]) == 0
    with Platform() as platform:
        [run] = platform.store.list_runs(kind="tune")
        trials = platform.store.list_trials(run.id)
    assert len(trials) == 4 and {t.status for t in trials} == {"completed"}
    for t in trials:
        last = {s["model"]: s["parameters"].get("weight") for s in t.config["slices"][-1]["sources"]}
        merged = sum(last[paths[m]] * (VALUES[m] - VALUES["base"]) for m in ("a", "b"))
        assert t.metrics["score"] == pytest.approx(-3 * (merged - 1.5) ** 2, rel=1e-5, abs=1e-9)
        assert {"slices[0].a.weight", "slices[1].b.weight"} <= set(trial_params(t.config))
        assert t.config["slices"][0]["sources"][1]["parameters"] != t.config["slices"][1]["sources"][1]["parameters"]


def test_bad_search_configs_are_refused_before_any_trial_or_record(alloy_home, tmp_path, capsys):
    from alloyml.platform.client import Platform

    path = tmp_path / "search.yaml"
    good = yaml.safe_load(open(_search_file(tmp_path)))
    cases = [({"metric": "tests.merging._search_metric:nothing"}, "metric"),
             ({"template": "missing.yaml"}, "template"),
             ({"template": {"merge_method": "ties"}}, "template"),
             ({"search": ["temperature"]}, "temperature"),
             ({"bounds": {"weight": [1.0, 0.0]}}, "bounds.weight"),
             ({"n_trials": 0}, "n_trials"),
             ({"layer_groups": "two"}, "layer_groups"),
             ({"parallel": "false"}, "parallel"),
             ({"seeds": 3}, "seeds")]
    for change, named in cases:
        path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(ConfigError, match=named):
            load_merge_search_config(path)
        assert main(["tune", "merge", str(path)]) == 2
        assert named in capsys.readouterr().err
    with Platform() as platform:
        assert platform.store.list_runs(kind="tune") == []
