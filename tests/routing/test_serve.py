"""The cascade on Ray Serve: answers equal the local cascade, the budget guard reacts, requests are
logged in batches, and a version swap under concurrent load drops nothing. One Serve for the module."""

import json
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from alloyml.lm import ConstantLM, Price
from alloyml.routing.adapters import Stage
from alloyml.routing.cascade import FrugalCascade
from alloyml.routing.scorer import scorer_from_dict
from alloyml.routing.synthetic import make_logged_responses
from tests.waiting import wait_until

pytestmark = pytest.mark.ray

NAME = "test-cascade"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(ray_session):
    from ray import serve

    from alloyml.routing.serve import CascadeService

    logs = make_logged_responses(400, 3, seed=3)
    plan = FrugalCascade(budget=8.0, n_thresholds=8, folds=3).fit(logs).plan_
    # Stub models answer like a model that is sure of itself for some, unsure for others.
    stages = {m: Stage(m, ConstantLM(f"{'sure' if i % 2 else 'maybe'} a{i}"), Price(per_call=float(c)))
              for i, (m, c) in enumerate(zip(logs.models, logs.cost.mean(axis=0), strict=True))}

    @ray_session.remote(num_cpus=0)
    class Collector:
        def __init__(self):
            self.batches = []

        def add(self, batch):
            self.batches.append(batch)

        def get(self):
            return self.batches

    collector = Collector.remote()

    def to_collector(batch):
        ray_session.get(collector.add.remote(batch))

    # The budget sits below the chosen point's cost, so the guard must step down.
    budget = plan.point.mean_cost * 0.5
    service = CascadeService(NAME, budget=budget, window_s=600, min_requests=8, log_callback=to_collector,
                             log_batch_size=5, log_flush_s=0.1, port=_free_port())
    service.deploy(plan, 1, stages)
    yield service, plan, stages, collector
    serve.shutdown()  # deletes every application


def _expected(plan, stages, query, point):
    """The cascade run by hand, in this process."""
    scorer = scorer_from_dict(plan.scorer)
    cost = 0.0
    for j, stage in enumerate(plan.frontier[point].stages):
        text, c = stages[stage.model].answer([query])[0]
        cost += c
        if stage.threshold is None or scorer.predict_proba([query], [text], [stage.model])[0] >= stage.threshold:
            return j, text, cost


def test_served_answers_equal_local_cascade_and_guard_reacts(setup):
    service, plan, stages, _ = setup
    handle = service.handle
    start = service.status()
    assert start["guard"]["point"] == len(start["frontier_points"]) - 1
    records = [handle.route.remote(f"w{i} w{i * 7 % 50} w3").result() for i in range(30)]
    for i, r in enumerate(records):
        stage, text, cost = _expected(plan, stages, f"w{i} w{i * 7 % 50} w3", r["frontier_point"])
        assert (r["stage_reached"], r["answer"], r["version"]) == (stage, text, "1")
        assert r["cost"] == pytest.approx(cost)
    state = service.status()["guard"]
    assert state["moves_down"] >= 1 and state["point"] < start["guard"]["point"]
    points = [r["frontier_point"] for r in records]
    assert points[0] == plan.chosen and min(points) < plan.chosen
    first, last = np.mean([r["cost"] for r in records[:8]]), np.mean([r["cost"] for r in records[-8:]])
    assert last < first


def test_http_json_and_status(setup):
    service, plan, stages, _ = setup
    request = urllib.request.Request(service.url, data=json.dumps({"query": "w4 w9", "query_id": "h1"}).encode(),
                                     headers={"Content-Type": "application/json"})
    body = json.loads(urllib.request.urlopen(request, timeout=30).read())
    stage, text, cost = _expected(plan, stages, "w4 w9", body["frontier_point"])
    assert (body["query_id"], body["stage_reached"], body["answer"]) == ("h1", stage, text)
    bad = urllib.request.Request(service.url, data=b'{"text": "no query key"}')
    with pytest.raises(urllib.error.HTTPError, match="400"):
        urllib.request.urlopen(bad, timeout=30)
    status = json.loads(urllib.request.urlopen(service.url + "/status", timeout=30).read())
    assert status["version"] == "1" and status["served"] >= 31


def test_requests_are_logged_in_batches(setup, ray_session):
    service, _, _, collector = setup
    def all_logged():
        batches = ray_session.get(collector.get.remote())
        return batches if sum(map(len, batches)) >= service.status()["served"] else None

    batches = wait_until(all_logged, 20, interval=0.2, message="every served request logged")
    records = [r for b in batches for r in b]
    assert len(records) == service.status()["served"] and max(map(len, batches)) <= 5
    assert {"stage_reached", "scores", "cost", "latency_ms", "frontier_point"} <= set(records[0])
    assert any(r["query_id"] == "h1" for r in records)


def test_version_swap_under_concurrent_load_drops_nothing(setup):
    from ray import serve

    service, plan, stages, _ = setup
    handle = service.handle
    versions, errors, stop = [], [], threading.Event()

    def by_handle():
        while not stop.is_set():
            try:
                versions.append(handle.route.remote("w1 w2").result(timeout_s=120)["version"])
            except Exception as err:  # any failure counts
                errors.append(repr(err))

    def by_http():
        while not stop.is_set():
            request = urllib.request.Request(service.url, data=b'{"query": "w5 w6"}',
                                             headers={"Content-Type": "application/json"})
            try:
                versions.append(json.loads(urllib.request.urlopen(request, timeout=120).read())["version"])
            except Exception as err:
                errors.append(repr(err))

    clients = [threading.Thread(target=f) for f in [by_handle] * 4 + [by_http] * 4]
    for c in clients:
        c.start()
    wait_until(lambda: versions.count("1") >= 8, 120, message="clients answered by version 1")
    service.deploy(plan, 2, stages)
    wait_until(lambda: versions[-8:] == ["2"] * 8, 120, message="clients answered by version 2")
    stop.set()
    for c in clients:
        c.join()
    assert errors == []
    assert "1" in versions and versions[-1] == "2" and versions.count("2") >= 8
    assert service.status()["version"] == "2"
    apps = serve.status().applications
    assert not [a for a in apps if a.startswith(f"{NAME}--v1--")]  # old stages retired
    assert [a for a in apps if a.startswith(f"{NAME}--v2--")]


@pytest.mark.slow
def test_cli_serves_stored_cascade_logs_to_store_and_follows_new_versions(setup, alloy_home, tmp_path):
    from alloyml.cli import main
    from alloyml.platform.client import Platform

    service, *_ = setup
    port = service.port  # one Serve per module: the CLI joins it
    logs = make_logged_responses(200, 2, seed=1)
    logs.save(tmp_path / "logs.csv")
    (tmp_path / "models.json").write_text(json.dumps(
        {m: {"kind": "constant", "text": f"sure a{i}", "cost_per_call": i + 1} for i, m in enumerate(logs.models)}
    ))
    assert main(["cascade", "fit", str(tmp_path / "logs.csv"), "--budget", "100", "--out", str(tmp_path / "p.json"),
                 "--thresholds", "4", "--folds", "2", "--models", str(tmp_path / "models.json"),
                 "--save", "cli-cascade"]) == 0
    served = threading.Thread(target=main, args=(["serve", "cascade", "cli-cascade", "--port", str(port),
                                                  "--no-guard", "--poll-s", "0.5", "--duration", "8"],))
    served.start()
    url = f"http://127.0.0.1:{port}/cli-cascade"

    def ask(query):
        request = urllib.request.Request(url, data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())

    def first_answer():
        try:
            return ask("w1")
        except Exception:  # the service is still starting
            return None

    answers = [wait_until(first_answer, 240, interval=0.5, message="the CLI service answering")]
    answers += [ask(f"w{i} w2") for i in range(9)]
    assert {a["version"] for a in answers} == {"1"}
    with Platform() as platform:
        v1 = platform.store.get_cascade("cli-cascade")
        platform.store.save_cascade("cli-cascade", v1.stages, v1.thresholds, v1.costs, v1.budget, plan=v1.plan)
    wait_until(lambda: answers.append(ask("w3")) or answers[-1]["version"] == "2", 240, interval=0.2,
               message="the service following version 2")
    assert answers[-1]["version"] == "2"
    served.join(timeout=240)
    assert not served.is_alive()
    by_v1 = [a for a in answers if a["version"] == "1"]
    with Platform() as platform:
        logged = platform.store.cascade_requests(v1.id)
    assert sorted((r.stage_reached, r.cost) for r in logged) == sorted((a["stage_reached"], a["cost"]) for a in by_v1)
    # The log keeps what was asked and answered, under the id the client got back (labels refer to it).
    assert sorted((r.request_id, r.query, r.answer, r.model, r.score) for r in logged) == sorted(
        (a["request_id"], a["query"], a["answer"], a["model"], a["score"]) for a in by_v1)
    assert all([c["model"] for c in r.calls] == v1.stages[: r.stage_reached + 1] and r.calls[-1]["answer"] == r.answer
               for r in logged)
