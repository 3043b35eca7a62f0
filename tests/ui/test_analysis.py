"""The dashboard's small computations against brute force and closed forms."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from alloyml.platform import entities as e
from alloyml.ui import analysis, graphs


def test_detection_curve_counts_flipped_points_below_each_edge():
    rng = np.random.default_rng(0)
    values = rng.normal(size=200)
    flipped = rng.choice(200, 30, replace=False)
    counts, edges = np.histogram(values, bins=17)
    curve = analysis.detection_curve(counts, edges, values[flipped])
    assert curve["fraction_inspected"].iloc[0] == 0 and curve["found"].iloc[0] == 0
    for j, edge in enumerate(edges[1:-1], start=1):
        assert curve["fraction_inspected"][j] == pytest.approx(sum(v < edge for v in values) / 200)
        assert curve["found"][j] == pytest.approx(sum(values[i] < edge for i in flipped) / 30)
    assert curve["found"].iloc[-1] == 1.0 and curve["fraction_inspected"].iloc[-1] == 1.0
    assert (curve["random"] == curve["fraction_inspected"]).all()


def test_rank_correlations_match_the_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=0.8, size=50)
    d = np.argsort(np.argsort(a)) - np.argsort(np.argsort(b))
    closed = 1 - 6 * (d**2).sum() / (50 * (50**2 - 1))
    matrix = analysis.rank_correlations(pd.DataFrame({"a": a, "b": b, "-a": -a}))
    assert matrix.loc["a", "b"] == pytest.approx(closed)
    assert matrix.loc["a", "-a"] == pytest.approx(-1.0) and matrix.loc["b", "b"] == pytest.approx(1.0)


def test_stage_hit_rates_count_each_stage():
    stages = np.array([2, 0, 0, 1, 0, 2, 2, 2])
    rates = analysis.stage_hit_rates(stages, 4)
    assert rates.tolist() == [3 / 8, 1 / 8, 4 / 8, 0.0]
    assert analysis.stage_hit_rates(np.array([], dtype=int), 2).tolist() == [0.0, 0.0]


def test_budget_state_uses_the_latest_window():
    requests = pd.DataFrame({"cost": [10.0] * 5 + [1.0, 2.0, 3.0],
                             "frontier_point": pd.array([2, 2, 2, 2, 2, 2, 1, 1], dtype="Int64")})
    state = analysis.budget_state(requests, budget=2.5, chosen_point=2, window=3)
    assert state.mean_cost == pytest.approx(2.0) and state.window == 3
    assert not state.over_budget and state.fallen_back and state.frontier_point == 1
    assert analysis.budget_state(requests, budget=2.5, chosen_point=1, window=8).over_budget


def test_param_importance_closed_forms():
    score = pd.Series([1.0, 1.0, 3.0, 3.0])
    params = pd.DataFrame({"decisive": ["x", "x", "y", "y"], "irrelevant": ["x", "y", "x", "y"]})
    importance = analysis.param_importance(params, score)
    assert importance["decisive"] == pytest.approx(1.0) and importance["irrelevant"] == pytest.approx(0.0)


def test_param_importance_of_a_binned_numeric_parameter():
    lr = pd.Series([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    score = pd.Series([1.0, 2.0, 2.0, 3.0, 5.0, 4.0, 8.0, 9.0])
    importance = analysis.param_importance(pd.DataFrame({"lr": lr}), score, bins=4)
    # Quartile bins of 8 distinct values hold 2 consecutive trials each.
    groups = score.to_numpy().reshape(4, 2)
    between = (2 * (groups.mean(axis=1) - score.mean()) ** 2).sum()
    assert importance["lr"] == pytest.approx(between / ((score - score.mean()) ** 2).sum())


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(2)
    cost, score = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 40).astype(float)
    for maximize in (True, False):
        signed = score if maximize else -score
        dominated = [any(cost[j] <= cost[i] and signed[j] >= signed[i] and (cost[j], signed[j]) != (cost[i], signed[i])
                         for j in range(40)) for i in range(40)]
        brute = ~np.array(dominated)
        mask = analysis.pareto_mask(cost, score, maximize)
        # Among equal (cost, score) ties the mask keeps one representative of each front point.
        assert set(zip(cost[mask], score[mask], strict=True)) == set(
            zip(cost[brute], score[brute], strict=True))


def test_removal_frame_long_form():
    frame = analysis.removal_frame({"fraction": [0, 0.5], "low_first": [0.8, 0.9], "high_first": [0.8, 0.4]})
    assert frame.groupby("order")["score"].apply(list).to_dict() == {"low first": [0.8, 0.9],
                                                                     "high first": [0.8, 0.4]}


def test_graphs_escape_names_and_colour_states():
    model = e.Model(1, 'say "hi"\\', "gla", 10, None, {}, dt.datetime(2026, 1, 1))
    dot = graphs.lineage_dot([e.LineageEdge(2, 1, "merge input", 0.25)], {1: model}, highlight=2)
    assert 'label="say \\"hi\\"\\\\\\n#1 · gla"' in dot and 'm1 -> m2 [label="merge input (0.25)"]' in dot
    start = dt.datetime(2026, 1, 1)
    steps = [e.WorkflowStep(1, 1, "a", "done", 1, [], {}, None, None, start, start + dt.timedelta(seconds=3)),
             e.WorkflowStep(2, 1, "b", "running", 2, ["a"], {}, None, None, start, None)]
    dot = graphs.workflow_dot(steps)
    assert '"a\\ndone · 3.0s"' in dot and '"b\\nrunning · 2 attempts"' in dot and "s0 -> s1;" in dot
    assert graphs.STATE_COLORS["running"] in dot


def test_frontier_frame_reads_a_fitted_plan():
    from alloyml.routing.cascade import FrugalCascade
    from alloyml.routing.synthetic import make_logged_responses

    plan = FrugalCascade(budget=8, n_thresholds=4, folds=2).fit(make_logged_responses(200, 3, seed=2)).plan_
    frame = analysis.frontier_frame(plan.model_dump())
    assert frame["cost"].tolist() == [p.mean_cost for p in plan.frontier]
    assert frame["accuracy"].tolist() == [p.accuracy for p in plan.frontier]
    assert frame["cost_se"].tolist() == [p.cost_se for p in plan.frontier]
    assert frame["chosen"].tolist() == [i == plan.chosen for i in range(len(plan.frontier))]
    assert frame["cascade"].iloc[-1].count("→") == len(plan.frontier[-1].stages) - 1
