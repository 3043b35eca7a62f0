"""alloyml LMs as DSPy LMs through the engine interface; DSPy optimisers driven by a scripted LM.

The scripted task model reverses a word only when the prompt shows it how (a demonstration, or an
instruction that says "backwards"), so each optimiser's gain is known in advance: 0 -> 1."""

from __future__ import annotations

import json
import re

import pytest

dspy = pytest.importorskip("dspy")

from alloyml.automl.dspy_bridge import AlloyEngine, dspy_lm, evaluate_program, run_dspy_optimizer  # noqa: E402
from alloyml.errors import InvalidInputError  # noqa: E402
from alloyml.lm import ScriptedLM, word_tokens  # noqa: E402

WORDS = ["stone", "river", "cloud", "apple", "tiger", "piano", "lemon", "chair"]
EXAMPLES = [dspy.Example(word=w, reversed=w[::-1]).with_inputs("word") for w in WORDS]


def metric(gold, pred, trace=None):
    return float(gold.reversed == pred.reversed)


def _respond(prompt, s):
    section = prompt.split("Your output fields are:")[1].split("All interactions")[0]
    outs = re.findall(r"\d+\. `(\w+)`", section)
    words = re.findall(r"\[\[ ## word ## \]\]\n(\w+)", prompt)
    if outs == ["reversed"] and words:
        shown = prompt.count("[[ ## word ## ]]") > 2 or "backwards" in prompt.lower()
        body = {"reversed": words[-1][::-1] if shown else words[-1]}
    else:  # an optimiser's proposal call
        body = {o: "Write the word backwards." for o in outs}
    if "JSON" in prompt:
        return json.dumps(body)
    return "".join(f"[[ ## {k} ## ]]\n{v}\n\n" for k, v in body.items()) + "[[ ## completed ## ]]"


def test_engine_passes_messages_and_counts_tokens():
    seen = []
    lm = ScriptedLM(lambda p, s: seen.append(p) or "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]")
    model = dspy_lm(lm, temperature=0.0, max_tokens=20)
    with dspy.context(lm=model):
        pred = dspy.Predict("question -> answer")(question="Capital of France?")
    assert pred.answer == "Paris"
    [prompt] = seen
    assert prompt.startswith("Your input fields are:") and "Capital of France?" in prompt
    engine = model.engine
    assert isinstance(engine, AlloyEngine) and engine.calls == 1
    assert engine.prompt_tokens == len(word_tokens(prompt))
    assert engine.completion_tokens == len(word_tokens("[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"))


@pytest.mark.parametrize("name", ["bootstrap_fewshot", "copro", "miprov2", "gepa"])
def test_optimizers_lift_a_demo_following_model(name):
    lm = ScriptedLM(_respond)
    program = dspy.Predict("word -> reversed")
    trials = []
    result = run_dspy_optimizer(program, EXAMPLES[:4], EXAMPLES[4:], metric, lm, optimizer=name, on_trial=trials.append)
    assert result.score_before == 0.0 and result.score_after == 1.0
    with dspy.context(lm=dspy_lm(lm)):  # independent re-evaluation of the compiled program
        assert evaluate_program(result.program, EXAMPLES, metric) == 1.0
        assert evaluate_program(program, EXAMPLES, metric) == 0.0  # the input program is left untouched
    assert result.tokens > 0 and trials[0].metrics == {"score_before": 0.0, "score_after": 1.0}


def test_unknown_optimizer_lists_known_ones():
    with pytest.raises(InvalidInputError, match="bootstrap_fewshot"):
        run_dspy_optimizer(dspy.Predict("a -> b"), EXAMPLES, EXAMPLES, metric, ScriptedLM(_respond), optimizer="x")
