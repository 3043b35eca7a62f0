"""The learned router against the simple baselines it must dominate, its strong-share knob, and
RouteLLM's metrics."""

import numpy as np
import pytest

from alloyml.routing.router import LearnedRouter, performance_gap_recovered, routing_curve_metrics
from alloyml.routing.synthetic import make_logged_responses


def _best_affordable_single(train, test, budget):
    affordable = train.cost.mean(axis=0) <= budget * (1 + 1e-9)
    return test.correct.mean(axis=0)[affordable].max()


@pytest.mark.parametrize("n_queries,n_models,seed,priced_as", [
    (4000, 5, 0, 2),  # examples/cascade_fit_and_serve.py: budget = what m2 costs, 5 models
    (2000, 6, 7, 3),
    (2000, 6, 7, 4),
    (1000, 4, 1, 1),
])
def test_router_is_never_below_the_best_affordable_single_model(n_queries, n_models, seed, priced_as):
    logs = make_logged_responses(n_queries, n_models, seed=seed)
    for split in range(3):
        train, test = logs.split(0.5, seed=split)
        budget = float(train.cost[:, priced_as].mean())
        result = LearnedRouter(budget=budget).fit(train).evaluate(test)
        best = _best_affordable_single(train, test, budget)
        se = np.sqrt(result.accuracy * (1 - result.accuracy) / test.n_queries)
        assert result.accuracy >= best - se, (split, result.accuracy, best, se)
        assert result.mean_cost <= 1.05 * budget


def test_router_beats_random_routing_at_its_cost():
    """Random routing between the two models straddling the router's spend, mixed to spend the same,
    is a candidate; the router's held-out accuracy is at least that mix's expected accuracy - 1 SE."""
    logs = make_logged_responses(4000, 5, seed=0)
    train, test = logs.split(0.5, seed=0)
    budget = 0.5 * (train.cost[:, 2].mean() + train.cost[:, 3].mean())
    result = LearnedRouter(budget=budget).fit(train).evaluate(test)
    c, a = test.cost.mean(axis=0), test.correct.mean(axis=0)
    share = (result.mean_cost - c[2]) / (c[3] - c[2])
    mix = (1 - share) * a[2] + share * a[3]
    se = np.sqrt(result.accuracy * (1 - result.accuracy) / test.n_queries)
    assert result.accuracy >= mix - se


def test_strong_share_knob_caps_calls_to_the_dearest_model():
    logs = make_logged_responses(2000, 3, seed=4)
    train, test = logs.split(0.5, seed=0)
    router = LearnedRouter(strong_share=0.3).fit(train)
    strong = int(np.argmax(train.cost.mean(axis=0)))
    chosen = router.predict(test.queries)
    assert (chosen == strong).mean() <= 0.3 + 0.05
    result = router.evaluate(test)
    assert result.strong_share == pytest.approx((chosen == strong).mean())
    with pytest.raises(Exception, match="exactly one"):
        LearnedRouter(budget=3.0, strong_share=0.2).fit(train)


def test_pgr_apgr_and_cpt_by_hand():
    assert performance_gap_recovered(0.7, 0.5, 0.9) == pytest.approx(0.5)
    # Curve points (share, accuracy) with weak 0.5 and strong 0.9: PGR 0.25 at share 0.2, 0.75 at 0.6.
    apgr, cpt = routing_curve_metrics([(0.2, 0.6), (0.6, 0.8)], 0.5, 0.9, level=0.5)
    # trapezoids over (0,0) (0.2,0.25) (0.6,0.75) (1,1)
    expected = 0.2 * 0.125 + 0.4 * 0.5 + 0.4 * 0.875
    assert apgr == pytest.approx(expected) and cpt == pytest.approx(0.6)
    assert np.isnan(routing_curve_metrics([(0.5, 0.7)], 0.7, 0.7)[0])


def test_evaluate_reports_pgr_of_its_accuracy():
    logs = make_logged_responses(1200, 3, seed=2)
    train, test = logs.split(0.5, seed=1)
    result = LearnedRouter(budget=float(train.cost[:, 1].mean())).fit(train).evaluate(test)
    weak, strong = test.correct[:, 0].mean(), test.correct[:, 2].mean()
    assert result.pgr == pytest.approx((result.accuracy - weak) / (strong - weak))
    assert 0.0 <= result.cpt <= 1.0 and 0.0 <= result.apgr <= 1.0
