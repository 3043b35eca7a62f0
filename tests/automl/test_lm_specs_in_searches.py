"""The searches take any `alloyml.lm` spec: `alloyml tune inference` tunes a LiteLLM endpoint (a local fake of
litellm stands in for the server), and APE and the DSPy engine build their models from specs."""

from __future__ import annotations

import json
import sys
import types

import pytest
import yaml

from alloyml.automl.ape import ape
from alloyml.automl.dspy_bridge import AlloyEngine
from alloyml.automl.prompting import Example
from alloyml.cli import main
from alloyml.lm import ConstantLM, LiteLLMChat


class FakeEndpoint:
    """litellm's `completion` / `token_counter` for an endpoint that echoes the prompt's last word when told
    to "Repeat", says "no" otherwise, and rambles " ok ok ok" after it; a token is a whitespace word."""

    def __init__(self):
        self.requests: list[dict] = []

    def token_counter(self, model, messages):
        return sum(len(m["content"].split()) for m in messages)

    def completion(self, **request):
        self.requests.append(request)
        content = request["messages"][-1]["content"]
        words = ([content.split()[-1]] if content.startswith("Repeat") else ["no"]) + ["ok"] * 3
        text = " ".join(words[: request["max_tokens"]])
        choice = types.SimpleNamespace(message=types.SimpleNamespace(content=text), finish_reason="stop")
        usage = types.SimpleNamespace(prompt_tokens=self.token_counter(request["model"], request["messages"]),
                                      completion_tokens=len(text.split()) * request["n"])
        return types.SimpleNamespace(choices=[choice] * request["n"], usage=usage)


@pytest.fixture
def endpoint(monkeypatch):
    fake = FakeEndpoint()
    monkeypatch.setitem(sys.modules, "litellm", types.SimpleNamespace(completion=fake.completion,
                                                                     token_counter=fake.token_counter))
    return fake


def test_tune_inference_tunes_a_litellm_endpoint(endpoint, alloy_home, tmp_path):
    from alloyml.platform.client import Platform

    rows = [{"input": f"say {w}", "target": w} for w in ("red", "green", "blue")]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": {"kind": "litellm", "model": "openai/local", "api_base": "http://127.0.0.1:8000/v1"},
        "data": "rows.jsonl",
        "space": {"max_tokens": [1, 4], "templates": ["{input}", "Repeat: {input}"]},
        "price": {"per_prompt_token": 1.0, "per_completion_token": 2.0},
        "budget": 6,
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "chosen.json"
    assert main(["tune", "inference", str(tmp_path / "tune.yaml"), "--out", str(out)]) == 0
    # By hand, per example: "{input}" costs 2 prompt words + 2 per completion word and is never right;
    # "Repeat: {input}" costs 3 + 2 * completion words and is right only when cut to one word.
    #   {input}, 1 -> 4 ; {input}, 4 -> 10 ; Repeat, 1 -> 5 (utility 1) ; Repeat, 4 -> 11
    chosen = json.loads(out.read_text())
    assert chosen["config"]["template"] == "Repeat: {input}" and chosen["config"]["max_tokens"] == 1
    assert (chosen["utility"], chosen["mean_cost"]) == (1.0, 5.0)
    assert {r["model"] for r in endpoint.requests} == {"openai/local"}
    assert {r["api_base"] for r in endpoint.requests} == {"http://127.0.0.1:8000/v1"}
    with Platform() as platform:
        [run] = platform.store.list_runs(kind="tune")
    assert run.params["config"]["model"]["kind"] == "litellm"
    assert run.params["config"]["price"] == {"per_call": 0.0, "per_prompt_token": 1.0, "per_completion_token": 2.0}


def test_ape_builds_proposer_and_target_from_specs():
    dev = [Example("a", "yes"), Example("b", "no")]
    result = ape({"kind": "constant", "text": "Answer yes."}, {"kind": "constant", "text": "yes", "tokens": 1},
                 dev, dev, n_proposals=3, n_rounds=0)
    # every proposal is the same instruction (scored once), after the empty baseline; the target says "yes":
    # right on 1 of 2 either way
    assert [(r.instruction, r.score, r.tokens) for r in result.table] == [("", 0.5, 2), ("Answer yes.", 0.5, 2)]
    assert result.best_instruction == ""  # a proposal must beat the empty baseline, not tie it


def test_dspy_engine_builds_its_model_from_a_spec(endpoint):
    engine = AlloyEngine({"kind": "litellm", "model": "openai/local"})
    assert isinstance(engine.lm, LiteLLMChat) and engine.lm.config.model == "openai/local"
    assert isinstance(AlloyEngine("constant").lm, ConstantLM)
