"""FrugalCascade end to end on synthetic logs, plan JSON, the CLI, and the learned router."""

import json

import numpy as np
import pytest
from sklearn.naive_bayes import BernoulliNB

from alloyml.cli import main
from alloyml.errors import ConfigError, InvalidInputError
from alloyml.routing.cascade import FrugalCascade, evaluate_plan
from alloyml.routing.optimizer import simulate_cascade
from alloyml.routing.plan import CascadePlan
from alloyml.routing.router import LearnedRouter
from alloyml.routing.scorer import TextScorer, score_responses
from alloyml.routing.synthetic import make_logged_responses


@pytest.fixture(scope="module")
def logs():
    return make_logged_responses(600, 4, seed=2).split(0.5, seed=0)


@pytest.fixture(scope="module")
def fitted(logs):
    train, _ = logs
    return FrugalCascade(budget=6.0, n_thresholds=16, folds=3).fit(train)


def test_chosen_point_is_best_under_budget_on_training(fitted, logs):
    train, _ = logs
    plan = fitted.plan_
    costs = np.array([p.mean_cost for p in plan.frontier])
    accs = np.array([p.accuracy for p in plan.frontier])
    assert plan.point.mean_cost <= 6.0
    assert plan.point.accuracy == accs[costs <= 6.0].max()
    # The reported training figures are those of the out-of-fold scores the optimiser saw.
    chain = [train.model_index(m) for m in plan.point.models]
    _, got, paid = simulate_cascade(fitted.train_scores_, train.correct, train.cost, chain, plan.point.thresholds)
    assert got.mean() == pytest.approx(plan.point.accuracy) and paid.mean() == pytest.approx(plan.point.mean_cost)


def test_cascade_beats_the_single_models_it_can_afford(fitted, logs):
    _, test = logs
    result = fitted.evaluate(test)
    affordable = test.cost.mean(axis=0) <= 6.0
    assert result.accuracy > test.correct.mean(axis=0)[affordable].max()


def test_plan_json_round_trip_scores_identically(fitted, logs, tmp_path):
    _, test = logs
    loaded = CascadePlan.load(fitted.plan_.save(tmp_path / "plan.json"))
    assert loaded == fitted.plan_
    from_json = evaluate_plan(loaded, test)  # scorer rebuilt from JSON weights
    direct = evaluate_plan(fitted.plan_, test, scorer=fitted.scorer_)
    np.testing.assert_array_equal(from_json.stage, direct.stage)
    assert from_json.accuracy == direct.accuracy
    chain = [test.model_index(m) for m in loaded.point.models]
    scores = score_responses(fitted.scorer_, test)
    _, got, paid = simulate_cascade(scores, test.correct, test.cost, chain, loaded.point.thresholds)
    assert from_json.accuracy == pytest.approx(got.mean()) and from_json.mean_cost == pytest.approx(paid.mean())


def test_any_sklearn_classifier_as_scorer(logs):
    train, _ = logs
    cascade = FrugalCascade(budget=6.0, n_thresholds=8, folds=3, scorer=TextScorer(BernoulliNB())).fit(train)
    assert cascade.plan_.scorer is None  # not JSON-saveable: evaluation needs the fitted scorer
    with pytest.raises(InvalidInputError, match="no saved scorer"):
        evaluate_plan(cascade.plan_, train)
    assert 0.0 < cascade.evaluate(train).accuracy <= 1.0


def test_invalid_plan_is_rejected(fitted):
    data = fitted.plan_.model_dump()
    data["frontier"][0]["stages"][-1]["threshold"] = 0.5
    with pytest.raises(ConfigError, match="last has none"):
        CascadePlan.from_dict(data)
    data = fitted.plan_.model_dump()
    data["chosen"] = 10_000
    with pytest.raises(ConfigError, match="chosen=10000"):
        CascadePlan.from_dict(data)


def test_cli_fit_then_eval(logs, tmp_path, capsys):
    train, test = logs
    train.save(tmp_path / "train.csv")
    test.save(tmp_path / "test.parquet")
    plan_path = tmp_path / "plan.json"
    assert main(["cascade", "fit", str(tmp_path / "train.csv"), "--budget", "6", "--out", str(plan_path),
                 "--thresholds", "16", "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "frontier" in out and "chosen point" in out
    assert main(["cascade", "eval", str(plan_path), str(tmp_path / "test.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = evaluate_plan(CascadePlan.load(plan_path), test)
    assert summary["accuracy"] == pytest.approx(expected.accuracy)
    assert summary["mean_cost"] == pytest.approx(expected.mean_cost)


def test_router_is_calibrated_to_budget_and_follows_its_rule(logs):
    train, test = logs
    router = LearnedRouter(budget=5.0, folds=3).fit(train)
    proba = router.predict_proba(test.queries)
    order = np.argsort(test.cost.mean(axis=0))
    expected = []
    for row in proba:  # the rule, query by query: cheapest predicted to succeed, else most promising
        ok = [j for j in order if row[j] >= router.threshold_]
        expected.append(ok[0] if ok else int(np.argmax(row)))
    np.testing.assert_array_equal(router.predict(test.queries), expected)
    result = router.evaluate(test)
    rows = np.arange(test.n_queries)
    assert result.accuracy == pytest.approx(test.correct[rows, expected].mean())
    assert result.mean_cost < 5.0 * 1.25  # calibrated on training; held-out spend stays near the budget
    with pytest.raises(InvalidInputError, match="below the cheapest"):
        LearnedRouter(budget=0.1, folds=3).fit(train)


def test_serve_cli_reports_unknown_cascade(alloy_home, capsys):
    assert main(["serve", "cascade", "no-such-cascade"]) == 2
    assert "no-such-cascade" in capsys.readouterr().err


def test_fit_save_stores_plan_with_model_specs(logs, alloy_home, tmp_path):
    from alloyml.platform.client import Platform

    train, _ = logs
    train.save(tmp_path / "train.csv")
    specs = {m: {"kind": "constant", "text": "x", "cost_per_call": 1.0} for m in train.models}
    (tmp_path / "models.json").write_text(json.dumps(specs))
    args = ["cascade", "fit", str(tmp_path / "train.csv"), "--budget", "6", "--out", str(tmp_path / "p.json"),
            "--thresholds", "8", "--folds", "3", "--models", str(tmp_path / "models.json"), "--save", "qa"]
    assert main(args) == 0 and main(args) == 0
    with Platform() as platform:
        stored = platform.store.get_cascade("qa")
    plan = CascadePlan.from_dict(stored.plan)
    assert stored.version == 2 and plan == CascadePlan.load(tmp_path / "p.json")
    assert plan.model_specs == specs and stored.stages == plan.point.models
    assert stored.costs == pytest.approx([train.cost[:, train.model_index(m)].mean() for m in stored.stages])
    (tmp_path / "bad.json").write_text('{"m0": {"text": "no kind"}}')
    args[-3] = str(tmp_path / "bad.json")
    assert main(args) == 2
