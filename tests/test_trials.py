"""One search record: a merge search and a hyperparameter search stream the same `TrialRecord` type to
`on_trial`, and the workflow layer's one recorder stores both the same way."""

from __future__ import annotations

import pytest
import torch

from alloyml.automl import Uniform, hyperparameter_search
from alloyml.merging.search import search_merge
from alloyml.platform.client import Platform
from alloyml.trials import SearchResult, TrialRecord
from alloyml.workflows.recording import trial_recorder


def _merge_search(on_trial):
    """Task arithmetic on one tensor: base 0, a = 1, b = 2, so the merge is w_a + 2 w_b; the metric peaks at
    w_a + 2 w_b = 1.5 (closed form), where it is 0."""
    states = {"base": {"w": torch.zeros(2)}, "a": {"w": torch.ones(2)}, "b": {"w": 2 * torch.ones(2)}}
    template = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}]}
    return search_merge(template, lambda s: -float(((s["w"] - 1.5) ** 2).sum()), layer_groups=1, n_trials=6,
                        popsize=3, sources=states, parallel=False, on_trial=on_trial)  # fmt: skip


def _bowl(config, report):
    report({"score": -abs(config["x"] - 3.0), "cost": 1.0})


@pytest.mark.ray
def test_merge_and_hpo_searches_record_the_same_way(ray_session, tmp_path):
    merge_seen, hpo_seen = [], []
    with Platform(db_url=f"sqlite:///{tmp_path / 'store.db'}", home=tmp_path / "home", upgrade=True) as platform:
        merge_run = platform.store.start_run("merge", name="merge search")
        hpo_run = platform.store.start_run("tune", name="hpo")
        merge_record = trial_recorder(platform, merge_run.id)
        hpo_record = trial_recorder(platform, hpo_run.id)

        merged = _merge_search(lambda t: (merge_seen.append(t), merge_record(t)))
        tuned = hyperparameter_search(_bowl, {"x": Uniform(low=0.0, high=6.0)}, max_iterations=1, num_samples=3,
                                      searcher="random", asha=False, seed=0, storage_path=tmp_path / "tune",
                                      on_trial=lambda t: (hpo_seen.append(t), hpo_record(t)))  # fmt: skip
        stored = {run.id: platform.store.list_trials(run.id) for run in (merge_run, hpo_run)}

    for result, seen, run in ((merged, merge_seen, merge_run), (tuned, hpo_seen, hpo_run)):
        assert type(result) is SearchResult
        assert seen == result.trials and all(type(t) is TrialRecord for t in seen)
        rows = stored[run.id]
        assert [(r.number, r.config, r.metrics, r.cost, r.seconds, r.status) for r in rows] == [
            (i, t.config, t.metrics, t.cost, pytest.approx(t.seconds), t.status) for i, t in enumerate(seen)
        ]
        best = max((t for t in seen if "score" in t.metrics), key=lambda t: t.metrics["score"])
        assert result.best_score == best.metrics["score"] and result.scores.tolist() == [
            t.metrics["score"] for t in seen
        ]
    # Both best scores are the closed-form metric of the best configuration.
    weights = {m["model"]: m["parameters"]["weight"] for m in merged.best_config["models"]}
    assert merged.best_score == pytest.approx(-2 * (weights["a"] + 2 * weights["b"] - 1.5) ** 2)
    assert tuned.best_score == pytest.approx(-abs(tuned.best_config["x"] - 3.0))


def test_a_failed_merge_trial_is_recorded_as_an_error():
    calls = []

    def failing_every_other(state):
        calls.append(1)
        if len(calls) % 2:
            raise ValueError("bad state")
        return 1.0

    seen = []
    states = {"base": {"w": torch.zeros(2)}, "a": {"w": torch.ones(2)}, "b": {"w": 2 * torch.ones(2)}}
    template = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}]}
    search_merge(template, failing_every_other, layer_groups=1, n_trials=4, popsize=4, sources=states,
                 parallel=False, on_trial=seen.append)  # fmt: skip
    assert [(t.status, t.error, t.metrics) for t in seen[:2]] == [
        ("error", "ValueError: bad state", {}),
        ("completed", None, {"score": 1.0}),
    ]
