"""`cascade-refit`: a refit that is worse is not deployed, one that is better is, each decision checked against
held-out accuracies and costs computed here by walking each plan's chain over the logged answers; the
promotion rule at its boundaries; bad input refused before any work; scheduling it; and (slow) a served
cascade rolling to the promoted version while a client sends requests, none failing."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import socket
import threading
import urllib.request

import numpy as np
import pytest

from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.platform import entities as e
from alloyml.routing import FrugalCascade, LoggedResponses, make_logged_responses
from alloyml.routing.promotion import decide_promotion
from alloyml.routing.scorer import scorer_from_dict
from alloyml.workflows.builtin import get_builtin
from alloyml.workflows.builtin.cascade_refit import refit_cascade, refit_workflow
from alloyml.workflows.recording import save_cascade_plan, store_location
from tests.waiting import wait_until

NAME = "prod"
SEED = 0
TEST_FRACTION = 0.3
SPECS = {f"m{i}": {"kind": "constant", "text": f"sure a{i}", "cost_per_call": float(i + 1)} for i in range(3)}


# -- a stored cascade and its labelled request log -------------------------------------------------------------------
def _store_cascade(platform, name=NAME):
    """Version 1, fitted on 300 logged responses of three models, with serving specs."""
    original = make_logged_responses(300, 3, seed=1)
    budget = float(original.cost.mean(axis=0)[1] * 1.5)
    plan = FrugalCascade(budget=budget).fit(original).plan_.model_copy(update={"model_specs": SPECS})
    return save_cascade_plan(platform, name, plan, original, budget), original


def _drifted_log(kind: str) -> LoggedResponses:
    """400 new requests. 'prices': every call costs twice as much (a plan fitted mostly on the old prices
    overspends); 'skills': the cheapest and the dearest model traded answers (the old thresholds no longer fit)."""
    log = make_logged_responses(400, 3, seed=2)
    if kind == "prices":
        return LoggedResponses(log.query_ids, log.queries, log.models, log.answers, log.correct, log.cost * 2)
    swap = [2, 1, 0]
    return LoggedResponses(log.query_ids, log.queries, log.models, log.answers[:, swap], log.correct[:, swap], log.cost)


def _log_and_label(platform, cascade, log: LoggedResponses) -> dict[str, int]:
    """Log each query as a served request that called every stage, and label every stage's answer, as
    `alloyml cascade label` with a `model` column does. Returns request id -> row of `log`."""
    requests, labels, rows = [], [], {}
    for q in range(log.n_queries):
        request_id = f"req{q:05d}"
        rows[request_id] = q
        calls = [{"model": m, "answer": str(log.answers[q, j]), "cost": float(log.cost[q, j]), "score": None}
                 for j, m in enumerate(log.models)]
        requests.append(e.CascadeRequest(len(calls) - 1, float(log.cost[q].sum()), 1.0, request_id=request_id,
                                         query=str(log.queries[q]), answer=calls[-1]["answer"],
                                         model=log.models[-1], calls=calls))
        labels += [(request_id, m, bool(log.correct[q, j])) for j, m in enumerate(log.models)]
    platform.store.log_cascade_requests(cascade.id, requests)
    platform.store.label_cascade_requests(cascade.name, labels)
    return rows


# -- the independent computation ------------------------------------------------------------------------------------
def _held_out_ids(request_ids, seed=SEED, fraction=TEST_FRACTION) -> list[str]:
    """The documented split: request ids sorted, permuted by default_rng(seed), the first round(f n) held out."""
    ordered = sorted(request_ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return sorted(ordered[i] for i in order[: int(round(fraction * len(ordered)))])


def _walk(plan: dict, log: LoggedResponses, rows: list[int]) -> tuple[float, float]:
    """(accuracy, mean cost) of a plan's chosen chain on logged rows, one query at a time: call each stage
    (pay its logged cost), stop at the first whose score reaches its threshold or at the last."""
    scorer = scorer_from_dict(plan["scorer"])
    stages = plan["frontier"][plan["chosen"]]["stages"]
    correct, costs = [], []
    for q in rows:
        paid = 0.0
        for stage in stages:
            j = log.models.index(stage["model"])
            paid += log.cost[q, j]
            if stage["threshold"] is None or scorer.predict_proba(
                    [log.queries[q]], [log.answers[q, j]], [stage["model"]])[0] >= stage["threshold"]:
                break
        correct.append(bool(log.correct[q, j]))
        costs.append(paid)
    return sum(correct) / len(rows), sum(costs) / len(costs)


def _check_against_walk(platform, result, old_plan: dict, log, rows_by_id, budget):
    """The recorded held-out split, both evaluations and the decision, recomputed here."""
    run = platform.store.get_run(result["run_id"])
    held = sorted(platform.artifacts.get_json(run.params["held_out_artifact"]))
    assert held == _held_out_ids(rows_by_id)
    rows = [rows_by_id[i] for i in held]
    new_plan = platform.artifacts.get_json(run.params["new_plan_artifact"])
    old_acc, old_cost = _walk(old_plan, log, rows)
    new_acc, new_cost = _walk(new_plan, log, rows)
    assert run.metrics["old_accuracy"] == pytest.approx(old_acc)
    assert run.metrics["old_mean_cost"] == pytest.approx(old_cost)
    assert run.metrics["new_accuracy"] == pytest.approx(new_acc)
    assert run.metrics["new_mean_cost"] == pytest.approx(new_cost)
    promote = bool(new_acc >= old_acc and new_cost <= 1.05 * budget)
    assert result["promoted"] is promote and run.metrics["promoted"] == float(promote)
    assert run.tags["decision"] == ("promoted" if promote else "kept") and run.tags["cascade"] == NAME
    assert run.metrics["held_out_queries"] == len(held) and run.params["old_version"] == 1
    return old_acc, old_cost, new_acc, new_cost


def test_a_worse_refit_is_not_deployed(sqlite_platform):
    stored, _ = _store_cascade(sqlite_platform)
    log = _drifted_log("prices")
    rows_by_id = _log_and_label(sqlite_platform, stored, log)
    result = refit_cascade(store_location(sqlite_platform), NAME)
    _, _, new_acc, new_cost = _check_against_walk(sqlite_platform, result, stored.plan, log, rows_by_id, stored.budget)
    assert new_cost > 1.05 * stored.budget  # the case this test is about: the new plan overspends
    assert not result["promoted"] and result["new_version"] is None
    latest = sqlite_platform.store.get_cascade(NAME)
    assert latest.version == 1 and latest.plan == stored.plan  # the served version is unchanged
    assert "new_version" not in sqlite_platform.store.get_run(result["run_id"]).metrics


def test_a_better_refit_is_deployed_and_the_next_refit_holds_out_only_newer_requests(sqlite_platform):
    stored, original = _store_cascade(sqlite_platform)
    log = _drifted_log("skills")
    rows_by_id = _log_and_label(sqlite_platform, stored, log)
    result = refit_cascade(store_location(sqlite_platform), NAME)
    old_acc, _, new_acc, new_cost = _check_against_walk(sqlite_platform, result, stored.plan, log, rows_by_id,
                                                        stored.budget)
    assert new_acc > old_acc and new_cost <= 1.05 * stored.budget
    latest = sqlite_platform.store.get_cascade(NAME)
    assert result["promoted"] and result["new_version"] == latest.version == 2
    run = sqlite_platform.store.get_run(result["run_id"])
    assert latest.plan["model_specs"] == SPECS  # served with the same models
    assert {k: v for k, v in latest.plan.items() if k != "training_responses"} == \
        {k: v for k, v in sqlite_platform.artifacts.get_json(run.params["new_plan_artifact"]).items()
         if k != "training_responses"}
    # Version 2 was fitted on the original responses and the requests not held out.
    trained = sqlite_platform.artifacts.get_json(latest.plan["training_responses"])
    held = set(_held_out_ids(rows_by_id))
    assert set(trained["query_id"]) == set(original.query_ids) | (set(rows_by_id) - held)
    assert result["train_queries"] == 300 + 400 - len(held) and result["original_queries"] == 300
    assert result["served_version"] is None  # nothing serves it here

    # Refitting version 2: only the requests it was not fitted on (the 120 held out before) are new.
    again = refit_cascade(store_location(sqlite_platform), NAME)
    assert again["old_version"] == 2 and again["new_log_queries"] == len(held)
    held_again = sqlite_platform.artifacts.get_json(sqlite_platform.store.get_run(again["run_id"]).params[
        "held_out_artifact"])
    assert sorted(held_again) == _held_out_ids(held)


def test_a_chain_that_leaves_a_model_out_is_refitted_on_the_models_it_calls(sqlite_platform):
    """Production calls only the chain's models, so only their answers can be labelled."""
    original = make_logged_responses(300, 3, seed=1)
    budget = float(original.cost.mean(axis=0)[1] * 1.5)
    plan = FrugalCascade(budget=budget, max_length=2).fit(original).plan_.model_copy(update={"model_specs": SPECS})
    stored = save_cascade_plan(sqlite_platform, NAME, plan, original, budget)
    chain = plan.point.models
    assert len(chain) <= 2  # a model is left out
    log = _drifted_log("skills")
    keep = [log.models.index(m) for m in chain]
    log = LoggedResponses(log.query_ids, log.queries, tuple(chain), log.answers[:, keep], log.correct[:, keep],
                          log.cost[:, keep])
    rows_by_id = _log_and_label(sqlite_platform, stored, log)
    result = refit_cascade(store_location(sqlite_platform), NAME)
    _check_against_walk(sqlite_platform, result, stored.plan, log, rows_by_id, budget)
    new_plan = sqlite_platform.artifacts.get_json(sqlite_platform.store.get_run(result["run_id"]).params[
        "new_plan_artifact"])
    assert set(new_plan["models"]) == set(chain) and set(new_plan["model_specs"]) == set(chain)


# -- the rule itself ------------------------------------------------------------------------------------------------
def test_promotion_rule_at_its_boundaries():
    n = 20
    old = np.array([True] * 12 + [False] * 8)
    cost = np.full(n, 10.0)
    tie = decide_promotion(old, old[::-1], cost, cost * 1.05, budget=10.0)
    assert tie.promote  # same accuracy, spend exactly 1.05 x budget
    assert not decide_promotion(old, old, cost, np.full(n, 10.5 + 1e-9), budget=10.0).promote
    one_worse = old.copy()
    one_worse[0] = False
    kept = decide_promotion(old, one_worse, cost, cost, budget=10.0)
    assert not kept.promote and "accuracy 0.5500 < old 0.6000" in kept.reason
    assert decide_promotion(old, one_worse, cost, cost, budget=10.0, tolerance=1 / n).promote
    both = decide_promotion(old, one_worse, cost, cost * 2, budget=10.0)
    assert "accuracy" in both.reason and "mean cost 20 > 1.05 x budget 10" in both.reason
    # The paired standard error, from its definition.
    d = [float(a) - float(b) for a, b in zip(old[::-1], old, strict=True)]
    mean = sum(d) / n
    assert tie.accuracy_diff_se == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n))
    for bad in (dict(budget=0.0), dict(budget=float("nan")), dict(budget=1.0, tolerance=-0.1)):
        with pytest.raises(InvalidInputError):
            decide_promotion(old, old, cost, cost, **bad)
    with pytest.raises(InvalidInputError, match="finite"):
        decide_promotion(old, old, cost, np.full(n, np.inf), budget=1.0)
    with pytest.raises(InvalidInputError, match="same >= 1 held-out"):
        decide_promotion(old, old[:3], cost, cost, budget=1.0)


# -- bad input ------------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_naming_it_before_any_work(sqlite_platform):
    location = store_location(sqlite_platform)
    with pytest.raises(NotFoundError, match="cascade 'nope' does not exist"):
        refit_cascade(location, "nope")
    stored, _ = _store_cascade(sqlite_platform)
    with pytest.raises(InvalidInputError, match=f"cascade '{NAME}' has no labelled requests"):
        refit_cascade(location, NAME)
    # One new labelled request: nothing to hold out and train on both.
    _log_and_label(sqlite_platform, stored, make_logged_responses(1, 3, seed=4))
    with pytest.raises(InvalidInputError, match=f"cascade '{NAME}': 1 labelled request.*at least one held out"):
        refit_cascade(location, NAME)
    # Labels of one stage only: no request has every model's labelled answer.
    other, _ = _store_cascade(sqlite_platform, "other")
    sqlite_platform.store.log_cascade_requests(other.id, [e.CascadeRequest(0, 1.0, 1.0, request_id="o1",
                                                                           query="q", answer="a", model="m0")])
    sqlite_platform.store.label_cascade_requests("other", [("o1", "m0", True)])
    with pytest.raises(InvalidInputError, match="cascade 'other': no labelled request has a labelled answer of every"):
        refit_cascade(location, "other")
    with pytest.raises(InvalidInputError, match="test_fraction"):
        refit_cascade(location, NAME, test_fraction=1.5)
    with pytest.raises(InvalidInputError, match="unknown \\['folds'\\]"):
        refit_workflow(folds=3)
    assert sqlite_platform.store.list_runs(kind="refit") == []  # nothing was recorded
    assert [sqlite_platform.store.get_cascade(n).version for n in (NAME, "other")] == [1, 1]


# -- scheduling it --------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_schedule_add_from_the_cli_takes_a_bare_cascade_name(alloy_home):
    from alloyml.cli import main
    from alloyml.platform.client import Platform

    assert main(["schedule", "add", "refit", "--workflow", "cascade-refit", "--cron", "0 3 * * *",
                 "--input", f"cascade={NAME}"]) == 0
    with Platform() as platform:
        schedule = platform.store.get_schedule("refit")
    assert schedule.workflow == "cascade-refit" and schedule.inputs["cascade"] == NAME
    assert set(schedule.inputs) == {"cascade", "store"} == set(get_builtin("cascade-refit").inputs)
    # Text that opens as JSON must still be JSON: a typo is an error, not a string.
    assert main(["schedule", "add", "bad", "--workflow", "cascade-refit", "--cron", "0 3 * * *",
                 "--input", "cascade={oops"]) == 2


@pytest.mark.ray
def test_a_scheduled_firing_runs_cascade_refit(sqlite_platform, ray_session):
    from alloyml.workflows import WorkflowHandle, schedules
    from alloyml.workflows.scheduler import Scheduler

    stored, _ = _store_cascade(sqlite_platform)
    rows_by_id = _log_and_label(sqlite_platform, stored, _drifted_log("skills"))
    start = dt.datetime(2026, 3, 28, 20, 0)
    schedules.add_schedule(sqlite_platform, "refit", "cascade-refit", "0 3 * * *", inputs={"cascade": NAME}, now=start)
    clock = Clock(start + dt.timedelta(hours=6))  # 02:00: not due yet
    submit = functools.partial(schedules.submit_scheduled, detach=False)
    scheduler = Scheduler(sqlite_platform, clock=clock, submit_fn=submit)
    assert scheduler.tick() == []
    clock.now = dt.datetime(2026, 3, 29, 3, 0, 5)
    [firing] = scheduler.tick()
    assert firing.outcome == "submitted" and firing.slot == dt.datetime(2026, 3, 29, 3)
    assert sqlite_platform.store.get_workflow(firing.workflow_id).name == "cascade-refit"
    result = WorkflowHandle(sqlite_platform, firing.workflow_id).result(timeout=240)
    assert result["promoted"] and sqlite_platform.store.get_cascade(NAME).version == 2
    assert sorted(sqlite_platform.artifacts.get_json(
        sqlite_platform.store.get_run(result["run_id"]).params["held_out_artifact"])) == _held_out_ids(rows_by_id)


# -- against a real Ray Serve ---------------------------------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_a_promoted_refit_rolls_the_served_cascade_with_no_failed_request(alloy_home, ray_session, monkeypatch):
    from ray import serve

    from alloyml.cli import main
    from alloyml.commands import serve as serve_command
    from alloyml.platform.client import Platform
    from alloyml.workflows import submit

    with Platform() as platform:
        stored, _ = _store_cascade(platform)
        _log_and_label(platform, stored, _drifted_log("skills"))
    port = _free_port()
    # The CLI stops on a signal; in a thread it has none, so keep its stop event to end it here.
    stops = []
    monkeypatch.setattr(serve_command, "_stop_on_signals", lambda event: stops.append(event) or event)
    served = threading.Thread(target=main, args=(["serve", "cascade", NAME, "--port", str(port), "--no-guard",
                                                  "--poll-s", "0.3"],))
    url = f"http://127.0.0.1:{port}/{NAME}"
    versions, errors, stop = [], [], threading.Event()

    def ask():
        request = urllib.request.Request(url, data=b'{"query": "w1 w2"}', headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())["version"]

    def client():
        while not stop.is_set():
            try:
                versions.append(ask())
            except Exception as err:  # any failure counts
                errors.append(repr(err))

    def first_answer():
        try:
            return ask()
        except Exception:  # the service is still starting
            return None

    served.start()
    try:
        assert wait_until(first_answer, 240, interval=0.5, message="the CLI service answering") == "1"
        clients = [threading.Thread(target=client) for _ in range(3)]
        for c in clients:
            c.start()
        with Platform() as platform:
            result = submit(platform, refit_workflow(rollout_timeout_s=180), {"cascade": NAME,
                                                                              "store": store_location(platform)}
                            ).result(timeout=300)
        assert result["promoted"] and result["served_version"] == "2"
        wait_until(lambda: versions[-6:] == ["2"] * 6, 60, message="clients answered by version 2")
        stop.set()
        for c in clients:
            c.join()
        assert errors == []
        assert "1" in versions and versions[-1] == "2"
        with Platform() as platform:
            assert platform.store.get_run(result["run_id"]).tags["served_version"] == "2"
    finally:
        stop.set()
        for event in stops:
            event.set()
        served.join(timeout=120)
        serve.shutdown()  # no other test inherits this Serve (and its port)
    assert not served.is_alive()
