"""Cascade stages from `alloyml.lm` specs: `alloyml serve cascade` builds every kind, an alloyml checkpoint
included, and `cascade fit --models` checks the specs before writing a plan."""

from __future__ import annotations

import json

import pytest

from alloyml.cli import main
from alloyml.errors import ConfigError
from alloyml.lm import Price
from alloyml.routing.adapters import build_stage, parse_stage_spec
from alloyml.routing.plan import CascadePlan
from alloyml.routing.synthetic import make_logged_responses
from tests.lm._tiny_alloy import greedy_by_hand, save_tiny_linear_lm


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("stage") / "tiny-gla"
    return path, save_tiny_linear_lm(path, mixer="gla", seed=1)


def test_the_serve_replica_builds_an_alloyml_model_from_its_spec(checkpoint):
    from alloyml.routing.serve import StageServer

    path, model = checkpoint
    spec = {"kind": "alloyml", "path": str(path), "max_tokens": 5,
            "price": {"per_call": 1.0, "per_prompt_token": 0.1, "per_completion_token": 0.2}}
    replica = StageServer.func_or_class("tiny", spec=spec)  # what each Serve replica runs
    text, cost = replica.answer("7*6=")
    assert text == greedy_by_hand(model, "7*6=", 5)
    assert cost == pytest.approx(1.0 + 0.1 * 4 + 0.2 * 5)  # 4 prompt bytes, 5 decoded tokens


def test_stage_spec_keys_split_from_the_model_spec(checkpoint):
    options, model = parse_stage_spec("m", {"kind": "alloyml", "path": str(checkpoint[0]), "stop": ["\n"],
                                            "price": {"per_call": 3}})
    assert model.kind == "alloyml" and model.path == checkpoint[0]
    assert options.price == Price(per_call=3) and options.stop == ("\n",) and options.max_tokens == 64
    stage = build_stage("m", {"kind": "constant", "text": "ok\nmore", "tokens": 2, "stop": ["\n"]})
    assert stage.answer(["q"]) == [("ok", 0.0)]
    for bad, says in [({"kind": "constant", "max_tokens": 0}, "max_tokens"),
                      ({"kind": "constant", "price": {"per_call": -2}}, "per_call"),
                      ({"kind": "constant", "price": {}, "cost_per_call": 1}, "price once"),
                      ({"kind": "alloyml", "path": "/nowhere"}, "path")]:
        with pytest.raises(ConfigError, match=says) as err:
            parse_stage_spec("m0", bad)
        assert "model 'm0'" in str(err.value)


def test_fit_with_alloyml_model_specs_writes_a_servable_plan(checkpoint, alloy_home, tmp_path, capsys):
    path, model = checkpoint
    logs = make_logged_responses(120, 2, seed=2)
    logs.save(tmp_path / "logs.csv")
    specs = {m: {"kind": "alloyml", "path": str(path), "max_tokens": 3, "price": {"per_completion_token": i + 1}}
             for i, m in enumerate(logs.models)}
    (tmp_path / "models.json").write_text(json.dumps(specs))
    args = ["cascade", "fit", str(tmp_path / "logs.csv"), "--budget", "100", "--out", str(tmp_path / "p.json"),
            "--thresholds", "4", "--folds", "2", "--models", str(tmp_path / "models.json")]
    assert main(args) == 0
    plan = CascadePlan.load(tmp_path / "p.json")
    assert plan.model_specs == specs
    expected = greedy_by_hand(model, "q", 3)
    for i, m in enumerate(logs.models):
        assert build_stage(m, plan.model_specs[m]).answer(["q"]) == [(expected, (i + 1) * 3.0)]

    specs[logs.models[1]]["path"] = str(tmp_path / "missing")
    (tmp_path / "models.json").write_text(json.dumps(specs))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"model {logs.models[1]!r} of kind 'alloyml': path" in err and "Traceback" not in err
