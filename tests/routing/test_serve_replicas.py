"""Cascades at scale: replica settings come from the plan or the CLI; with two replicas Serve runs two
ingress replicas (and two per stage), concurrent HTTP requests are spread over both ingress replicas,
every answer equals the cascade run by hand, and none fails."""

from __future__ import annotations

import argparse
import json
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.lm import ConstantLM, Price
from alloyml.routing.adapters import Stage
from alloyml.routing.cascade import FrugalCascade
from alloyml.routing.plan import CascadePlan, ReplicaPlan
from alloyml.routing.scorer import scorer_from_dict
from alloyml.routing.synthetic import make_logged_responses

NAME = "replicated-cascade"


def _plan() -> tuple[CascadePlan, dict]:
    logs = make_logged_responses(300, 3, seed=5)
    plan = FrugalCascade(budget=8.0, n_thresholds=8, folds=3).fit(logs).plan_
    stages = {m: Stage(m, ConstantLM(f"{'sure' if i % 2 else 'maybe'} a{i}"), Price(per_call=float(c)))
              for i, (m, c) in enumerate(zip(logs.models, logs.cost.mean(axis=0), strict=True))}
    return plan, stages


def test_replica_settings_are_checked_and_map_to_serve_options():
    assert ReplicaPlan(num_replicas=3).deployment_options() == {"num_replicas": 3}
    auto = ReplicaPlan(num_replicas=2, max_replicas=5, target_ongoing_requests=4).deployment_options()
    assert auto == {"autoscaling_config": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 5,
                                           "target_ongoing_requests": 4.0}}
    plan, _ = _plan()
    with pytest.raises(ConfigError, match="max_replicas=1 is below num_replicas=2"):
        CascadePlan.from_dict({**plan.model_dump(), "replicas": {"num_replicas": 2, "max_replicas": 1}})
    stored = CascadePlan.from_dict({**plan.model_dump(), "replicas": {"num_replicas": 2}})
    assert CascadePlan.from_dict(json.loads(stored.model_dump_json())).replicas == ReplicaPlan(num_replicas=2)

    from alloyml.commands.serve import replica_settings

    def flags(replicas=None, max_replicas=None, target=None):
        return argparse.Namespace(replicas=replicas, max_replicas=max_replicas, target_ongoing_requests=target)

    assert replica_settings(flags()) is None  # then the plan decides
    assert replica_settings(flags(2)) == ReplicaPlan(num_replicas=2)
    with pytest.raises(InvalidInputError, match="--replicas"):
        replica_settings(flags(0))
    with pytest.raises(InvalidInputError, match="--target-ongoing-requests"):
        replica_settings(flags(1, 3, float("inf")))


@pytest.mark.ray
@pytest.mark.slow  # eight replica actors (ingress and three stages, two each): ~70 s on the shared 2 cores
def test_two_replicas_both_serve_and_no_request_fails(ray_session):
    from ray import serve

    from alloyml.routing.serve import CascadeService

    plan, stages = _plan()
    plan = CascadePlan.from_dict({**plan.model_dump(), "replicas": {"num_replicas": 2}})  # from the plan
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = CascadeService(NAME, port=port)
    try:
        service.deploy(plan, 1, stages)
        deployments = serve.status().applications[NAME].deployments
        states = deployments["CascadeIngress"].replica_states
        assert {str(s).rsplit(".", 1)[-1]: n for s, n in states.items()} == {"RUNNING": 2}, states

        queries = [f"w{i} w{i * 7 % 50} w3" for i in range(120)]

        def ask(query):
            request = urllib.request.Request(service.url, data=json.dumps({"query": query}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, queries))
    finally:
        serve.delete(NAME)
        for app in list(serve.status().applications):
            if app.startswith(f"{NAME}--v"):
                serve.delete(app)

    assert [status for status, _ in answers] == [200] * len(queries)  # no request failed
    by_replica: dict[str, int] = {}
    for _, body in answers:
        by_replica[body["replica"]] = by_replica.get(body["replica"], 0) + 1
    assert len(by_replica) == 2 and min(by_replica.values()) >= 1, by_replica  # both replicas served
    scorer = scorer_from_dict(plan.scorer)
    for query, (_, body) in zip(queries, answers, strict=True):
        cost = 0.0
        reached = None
        for j, stage in enumerate(plan.frontier[plan.chosen].stages):  # the cascade run by hand
            text, c = stages[stage.model].answer([query])[0]
            cost += c
            if stage.threshold is None or scorer.predict_proba([query], [text], [stage.model])[0] >= stage.threshold:
                reached = j
                break
        assert (body["stage_reached"], body["answer"], body["cost"]) == (reached, text, pytest.approx(cost))
