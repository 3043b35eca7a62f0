"""Merge search finds the weights of a known target merge (closed form), locally and on Ray."""

from __future__ import annotations

import pytest
import yaml
from merge_helpers import perturbed, small_state

from alloyml.errors import InvalidInputError
from alloyml.merging import merge
from alloyml.merging.search import search_merge

TEMPLATE = {"merge_method": "task_arithmetic", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}]}


@pytest.fixture
def problem():
    """A target built in closed form: base + 0.3 (a - base) + 0.7 (b - base) in layer 0, with a's weight
    rising linearly to 0.9 at the last layer; the metric is minus the squared distance to it."""
    base = small_state(0, layers=3)
    states = {"base": base, "a": perturbed(base, 0.5, 1), "b": perturbed(base, 0.5, 2)}
    wa = {0: 0.3, 1: 0.6, 2: 0.9}
    target = {}
    for k, v in base.items():
        if not v.is_floating_point():
            continue
        layer = next((i for i in wa if f"layers.{i}." in k), 0)
        target[k] = v + wa[layer] * (states["a"][k] - v) + 0.7 * (states["b"][k] - v)

    def metric(state):
        return -sum(float(((state[k] - t) ** 2).sum()) for k, t in target.items())

    return states, metric


def test_search_recovers_per_layer_weights_locally(problem):
    states, metric = problem
    seen = []
    result = search_merge(
        TEMPLATE, metric, layer_groups=2, n_trials=150, sources=states, parallel=False, seed=0, on_trial=seen.append
    )
    assert seen == result.trials and len(result.trials) >= 150
    assert result.best_score == max(t.metrics["score"] for t in result.trials)
    best = yaml.safe_load(result.best_yaml)
    wa, wb = (m["parameters"]["weight"] for m in best["models"])
    assert wa == pytest.approx([0.3, 0.9], abs=0.05)
    assert wb == pytest.approx([0.7, 0.7], abs=0.05)
    # The best config, merged again, scores what the search recorded.
    assert metric(merge(result.best_config, sources=states).state_dict) == pytest.approx(result.best_score)


@pytest.mark.ray
def test_search_runs_trials_on_ray(problem, ray_session):
    states, metric = problem
    seen = []
    result = search_merge(
        TEMPLATE, metric, layer_groups=1, n_trials=24, popsize=6, sources=states, seed=0, on_trial=seen.append
    )
    assert len(result.trials) == 24 and sorted(int(t.trial_id) for t in seen) == list(range(24))
    assert {t.extra["generation"] for t in result.trials} == {0, 1, 2, 3}
    for t in result.trials[:3]:  # each recorded score is the metric of the recorded config
        assert metric(merge(t.config, sources=states).state_dict) == pytest.approx(t.metrics["score"])
    scores = [t.metrics["score"] for t in result.trials]
    assert result.best_score > scores[0] or result.best_score == max(scores)


def test_failed_trials_are_recorded_and_bad_searches_rejected(problem):
    states, _ = problem
    calls = []

    def flaky(state):
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("metric blew up")
        return float(len(calls))

    result = search_merge(TEMPLATE, flaky, layer_groups=1, n_trials=4, popsize=4, sources=states, parallel=False)
    errors = [t.error for t in result.trials if t.error]
    assert errors == ["RuntimeError: metric blew up"] * 2
    assert result.best_score == 4.0
    with pytest.raises(InvalidInputError, match="no parameter 'wieght'"):
        search_merge(TEMPLATE, flaky, search=("wieght",), sources=states, parallel=False)
    with pytest.raises(InvalidInputError, match="layer_groups and n_trials must be >= 1"):
        search_merge(TEMPLATE, flaky, layer_groups=0, sources=states, parallel=False)
    sliced = {"merge_method": "linear", "slices": [{"sources": [{"model": "a"}]}]}
    with pytest.raises(InvalidInputError, match="`slices` must be a list of"):
        search_merge(sliced, flaky, sources=states, parallel=False)


SLICED = {
    "merge_method": "task_arithmetic",
    "base_model": "base",
    "slices": [
        {"sources": [{"model": m, "layer_range": [0, 2]} for m in ("base", "a", "b")]},
        {"sources": [{"model": m, "layer_range": [2, 3]} for m in ("base", "a", "b")]},
    ],
}


@pytest.mark.slow  # ~20 s (320 in-memory merges)
def test_search_over_a_slices_template_tunes_each_slice(problem):
    """The closed-form target has a's weight 0.3 -> 0.6 over slice 0's two layers and 0.9 in slice 1
    (which also holds the final tensors: the embeddings come from slice 0 at its first layer's weight)."""
    from alloyml.ui.analysis import trial_params

    states, metric = problem
    result = search_merge(SLICED, metric, layer_groups=2, n_trials=320, sources=states, parallel=False, seed=0)
    best = yaml.safe_load(result.best_yaml)
    a0, b0 = (src["parameters"]["weight"] for src in best["slices"][0]["sources"][1:])
    a1 = best["slices"][1]["sources"][1]["parameters"]["weight"]
    assert a0 == pytest.approx([0.3, 0.6], abs=0.05) and b0 == pytest.approx([0.7, 0.7], abs=0.05)
    assert a1[-1] == pytest.approx(0.9, abs=0.05)  # a one-layer slice sits at t = 1 of its gradient
    assert metric(merge(result.best_config, sources=states).state_dict) == pytest.approx(result.best_score)
    trial = result.trials[0]
    assert set(trial.extra["values"]) == {f"slices[{k}].{m}.weight" for k in (0, 1) for m in ("a", "b")}
    columns = trial_params(trial.config)
    assert columns["slices[1].a.weight[1]"] == trial.extra["values"]["slices[1].a.weight"][1]
