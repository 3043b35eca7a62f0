"""Learning from served traffic: the request log keeps what was asked and answered, labels attach to it
(`alloyml cascade label`), and `alloyml cascade fit --from-log` refits on the labelled requests."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from alloyml.cli import main
from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.platform import entities as e
from alloyml.platform.client import Platform
from alloyml.routing.cascade import FrugalCascade
from alloyml.routing.plan import CascadePlan
from alloyml.routing.responses import LoggedResponses
from alloyml.routing.synthetic import make_logged_responses
from alloyml.workflows.recording import StoreRequestLog, served_responses


def _served(logs: LoggedResponses, q: int, reached: int) -> dict:
    """The record the ingress writes for query q when it called models 0..reached."""
    calls = [{"model": logs.models[m], "answer": str(logs.answers[q, m]), "cost": float(logs.cost[q, m]),
              "score": None if m == reached else 0.25} for m in range(reached + 1)]
    return {"request_id": uuid.uuid4().hex, "query_id": f"client-{q}", "query": str(logs.queries[q]),
            "answer": calls[-1]["answer"], "model": calls[-1]["model"], "stage_reached": reached,
            "scores": [0.25] * reached, "score": None, "cost": float(logs.cost[q, : reached + 1].sum()),
            "latency_ms": 1.5 + q, "frontier_point": 0, "errors": [{"model": "m9", "error": "timeout"}][:q % 2],
            "calls": calls}


@pytest.fixture
def stored(db_url, tmp_path):
    with Platform(db_url=db_url, home=tmp_path, upgrade=True) as platform:
        cascade = platform.store.save_cascade("c", ["m0", "m1", "m2"], [0.5, 0.5], [1.0, 2.0, 3.0], 2.0)
        yield platform, cascade


def test_request_log_round_trip_keeps_text_answer_calls_and_errors(stored):
    platform, cascade = stored
    logs = make_logged_responses(6, 3, seed=3)
    records = [_served(logs, q, q % 3) for q in range(6)]
    StoreRequestLog(cascade.id, platform.settings.db_url, str(platform.settings.home))(records)
    logged = platform.store.cascade_requests(cascade.id)[::-1]  # newest first
    assert [(r.request_id, r.query_id, r.query, r.answer, r.model, r.stage_reached, r.cost, r.latency_ms, r.calls,
             r.errors, r.labels) for r in logged] == [
        (x["request_id"], x["query_id"], x["query"], x["answer"], x["model"], x["stage_reached"], x["cost"],
         x["latency_ms"], x["calls"], x["errors"], {}) for x in records]


def test_requests_logged_without_text_stay_readable(stored):
    platform, cascade = stored  # what a writer from before revision 0004 stored
    platform.store.log_cascade_requests(cascade.id, [e.CascadeRequest(1, 2.0, 3.0, [0.1])])
    [old] = platform.store.cascade_requests(cascade.id)
    assert (old.stage_reached, old.cost, old.request_id, old.query, old.calls, old.labels) == (
        1, 2.0, None, None, [], {})


def test_labels_attach_to_the_named_answers_and_relabelling_replaces(stored):
    platform, cascade = stored
    logs = make_logged_responses(4, 3, seed=3)
    records = [_served(logs, q, 2) for q in range(4)]
    StoreRequestLog(cascade.id, platform.settings.db_url, str(platform.settings.home))(records)
    ids = [r["request_id"] for r in records]
    assert platform.store.label_cascade_requests("c", [(ids[0], None, True), (ids[1], "m0", False),
                                                       (ids[1], "m2", True), (ids[0], None, False)]) == 3
    by_id = {r.request_id: r.labels for r in platform.store.labelled_cascade_requests("c")}
    assert by_id == {ids[0]: {"m2": False}, ids[1]: {"m0": False, "m2": True}}  # the later line won
    platform.store.label_cascade_requests("c", [(ids[0], "m2", True)])
    assert {r.request_id: r.labels for r in platform.store.labelled_cascade_requests("c")}[ids[0]] == {"m2": True}


def test_labels_are_refused_whole_naming_the_line(stored):
    platform, cascade = stored
    logs = make_logged_responses(2, 3, seed=3)
    records = [_served(logs, 0, 0), _served(logs, 1, 2)]
    StoreRequestLog(cascade.id, platform.settings.db_url, str(platform.settings.home))(records)
    good = (records[1]["request_id"], None, True)
    with pytest.raises(NotFoundError, match=r"f.csv line 3: request_id 'nope' is not a logged request of cascade 'c'"):
        platform.store.label_cascade_requests("c", [good, ("nope", None, True)], ["f.csv line 2", "f.csv line 3"])
    with pytest.raises(InvalidInputError, match=r"label 1: model 'm2' did not answer request"):
        platform.store.label_cascade_requests("c", [good, (records[0]["request_id"], "m2", True)])
    other = platform.store.save_cascade("other", ["m0"], [], [1.0], 1.0)
    with pytest.raises(NotFoundError, match="is not a logged request of cascade 'other'"):
        platform.store.label_cascade_requests(other.name, [good])
    with pytest.raises(NotFoundError, match="cascade 'missing' does not exist"):
        platform.store.label_cascade_requests("missing", [good])
    assert platform.store.labelled_cascade_requests("c") == []  # nothing of the refused batches stayed


def test_refit_from_log_equals_a_fit_on_the_same_responses_built_by_hand(stored, monkeypatch, tmp_path, capsys):
    platform, cascade = stored
    logs = make_logged_responses(120, 3, seed=5)
    # Queries 0..99 reached the last stage, so every model answered; 100..119 stopped at m0 (sparse).
    reached = [2] * 100 + [0] * 20
    records = [_served(logs, q, reached[q]) for q in range(120)]
    StoreRequestLog(cascade.id, platform.settings.db_url, str(platform.settings.home))(records)
    labels = [{"request_id": r["request_id"], "model": logs.models[m], "correct": bool(logs.correct[q, m])}
              for q, r in enumerate(records) for m in range(reached[q] + 1)]
    (tmp_path / "labels.jsonl").write_text("\n".join(json.dumps(x) for x in labels) + "\n")
    monkeypatch.setenv("ALLOYML_DB_URL", platform.settings.db_url)
    monkeypatch.setenv("ALLOYML_HOME", str(platform.settings.home))
    assert main(["cascade", "label", "c", str(tmp_path / "labels.jsonl")]) == 0
    assert f"labelled {len(labels)} answers" in capsys.readouterr().out

    out = tmp_path / "plan.json"
    fit = ["cascade", "fit", "--from-log", "c", "--budget", "8", "--out", str(out), "--thresholds", "8",
           "--folds", "3"]
    assert main(fit) == 2  # sparse: by default refused, naming a request that lacks answers
    assert "lack answers from some models" in capsys.readouterr().err
    assert main([*fit, "--missing", "drop"]) == 0
    by_hand = logs.subset(np.arange(100))
    by_hand = LoggedResponses(np.array([r["request_id"] for r in records[:100]], dtype=object), by_hand.queries,
                              by_hand.models, by_hand.answers, by_hand.correct, by_hand.cost)
    expected = FrugalCascade(budget=8, n_thresholds=8, folds=3).fit(by_hand).plan_
    assert CascadePlan.load(out).model_dump() == expected.model_dump()
    rebuilt = served_responses(platform, "c", missing="drop")
    np.testing.assert_array_equal(rebuilt.correct, by_hand.correct)
    np.testing.assert_array_equal(rebuilt.cost, by_hand.cost)


def test_fit_needs_exactly_one_source(alloy_home, tmp_path, capsys):
    assert main(["cascade", "fit", "--budget", "1", "--out", str(tmp_path / "p.json")]) == 2
    assert "either a responses file or --from-log NAME" in capsys.readouterr().err


def test_from_log_without_labels_says_how_to_label(stored, monkeypatch, tmp_path, capsys):
    platform, _ = stored
    monkeypatch.setenv("ALLOYML_DB_URL", platform.settings.db_url)
    monkeypatch.setenv("ALLOYML_HOME", str(platform.settings.home))
    assert main(["cascade", "fit", "--from-log", "c", "--budget", "1", "--out", str(tmp_path / "p.json")]) == 2
    assert "has no labelled requests; attach labels with `alloyml cascade label c FILE`" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "text", "message"), [
    ("l.csv", "request_id,correct\nabc,true\ndef,perhaps\n", "l.csv line 3: correct must be true/false or 1/0"),
    ("l.csv", "request,correct\nabc,1\n", "l.csv line 1: the header lacks ['request_id']"),
    ("l.csv", "request_id,correct\nabc,1,extra\n", "l.csv line 2: more cells than the header's 2 columns"),
    ("l.csv", "request_id,correct\n,1\n", "l.csv line 2: request_id must be a non-empty string"),
    ("l.jsonl", '{"request_id": "a", "correct": 1}\n\n{"request_id": "b", "correct": 2}\n',
     "l.jsonl line 3: correct must be true/false or 1/0, got 2"),
    ("l.jsonl", '{"request_id": "a", "correct": true}\n[1]\n', "l.jsonl line 2: expected an object"),
    ("l.jsonl", '{"request_id": 5, "correct": true}\n', "l.jsonl line 1: request_id must be a non-empty string"),
    ("l.jsonl", "{oops\n", "l.jsonl line 1: not JSON"),
    ("l.jsonl", "\n", "has no labels"),
    ("l.txt", "x", "must end in .jsonl or .csv"),
])
def test_label_file_errors_name_the_line(alloy_home, tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert main(["cascade", "label", "c", str(tmp_path / name)]) == 2
    assert message in capsys.readouterr().err


def test_label_csv_reads_booleans_and_optional_model(tmp_path):
    from alloyml.routing.labels import read_labels

    (tmp_path / "l.csv").write_text("request_id,correct,model\na,1,\nb,FALSE,m1\nc,yes,m0\n")
    assert read_labels(tmp_path / "l.csv") == (
        [("a", None, True), ("b", "m1", False), ("c", "m0", True)], ["l.csv line 2", "l.csv line 3", "l.csv line 4"])
