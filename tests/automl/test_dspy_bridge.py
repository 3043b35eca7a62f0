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


def _counting_metric(seen):
    def counted(gold, pred, trace=None):
        seen.append(gold.word)
        return metric(gold, pred, trace)

    return counted


@pytest.mark.parametrize("name", ["miprov2", "gepa"])
def test_the_reported_split_is_never_shown_to_the_optimiser(name):
    """The metric sees each devset example exactly twice (before and after); the optimiser selects on valset."""
    seen = []
    train, val, dev = EXAMPLES[:3], EXAMPLES[3:5], EXAMPLES[5:]
    result = run_dspy_optimizer(dspy.Predict("word -> reversed"), train, dev, _counting_metric(seen),
                                ScriptedLM(_respond), optimizer=name, valset=val)
    dev_words = {ex.word for ex in dev}
    assert sorted(w for w in seen if w in dev_words) == sorted([ex.word for ex in dev] * 2)
    assert any(w in {ex.word for ex in val} for w in seen)  # the optimiser did select on valset
    assert result.score_after == 1.0
    with pytest.raises(InvalidInputError, match="devset"):
        run_dspy_optimizer(dspy.Predict("word -> reversed"), train, dev, metric, ScriptedLM(_respond),
                           optimizer=name, valset=val + dev[:1])


@pytest.mark.parametrize("name", ["copro", "miprov2", "gepa"])
def test_a_separate_prompt_model_writes_the_proposals(name):
    proposals, tasks = [], []
    task_lm = ScriptedLM(lambda p, s: tasks.append(p) or _respond(p, s), name="task")
    prompt_lm = ScriptedLM(lambda p, s: proposals.append(p) or _respond(p, s), name="proposer")
    key = {"gepa": "reflection_lm"}.get(name, "prompt_model")
    result = run_dspy_optimizer(dspy.Predict("word -> reversed"), EXAMPLES[:4], EXAMPLES[4:], metric, task_lm,
                                optimizer=name, options={key: prompt_lm})
    assert proposals and result.score_after == 1.0
    # the task model only ever answers the task signature
    assert all("`reversed`" in p.split("Your output fields are:")[1].split("All interactions")[0] for p in tasks)
    assert result.tokens >= sum(len(word_tokens(p)) for p in proposals + tasks)


def test_gepa_reads_textual_feedback():
    from alloyml.automl.dspy_bridge import gepa_feedback

    gold = EXAMPLES[0]
    wrong = gepa_feedback(metric)(gold, dspy.Prediction(reversed="stone"))
    assert wrong.score == 0.0 and "expected reversed='enots'" in wrong.feedback and "'stone'" in wrong.feedback
    own = gepa_feedback(lambda g, p, t=None: dspy.Prediction(score=0.5, feedback="half right"))(gold, wrong)
    assert (own.score, own.feedback) == (0.5, "half right")
    reflections = []
    prompt_lm = ScriptedLM(lambda p, s: reflections.append(p) or _respond(p, s), name="reflector")
    run_dspy_optimizer(dspy.Predict("word -> reversed"), EXAMPLES[:4], EXAMPLES[4:], metric, ScriptedLM(_respond),
                       optimizer="gepa", prompt_lm=prompt_lm)
    assert any("expected reversed=" in p for p in reflections)  # the reflection LM was shown the feedback


def test_images_are_refused_and_acall_works():
    import asyncio

    lm = dspy_lm(ScriptedLM(lambda p, s: "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"))
    with dspy.context(lm=lm):
        pred = asyncio.run(dspy.Predict("question -> answer").acall(question="Capital of France?"))
        assert pred.answer == "Paris"
        with pytest.raises(Exception, match="text only") as info:
            dspy.Predict("image: dspy.Image -> answer")(image=dspy.Image("https://example.invalid/x.png"))
    chain = [info.value, *(e for e in (info.value.__cause__, info.value.__context__) if e)]
    assert any(isinstance(e, InvalidInputError) for e in chain)


def test_cache_key_follows_the_model_not_just_its_name():
    def answer(text):
        return lambda p, s: f"[[ ## answer ## ]]\n{text}\n\n[[ ## completed ## ]]"

    first, second = ScriptedLM(answer("Paris"), name="same"), ScriptedLM(answer("Lyon"), name="same")
    assert first.fingerprint() != second.fingerprint()
    assert first.fingerprint() == ScriptedLM(answer("Paris"), name="same").fingerprint()
    got = []
    for lm in (first, second):
        with dspy.context(lm=dspy_lm(lm, cache=True)):
            got.append(dspy.Predict("question -> answer")(question="Capital of France? (cache test)").answer)
    assert got == ["Paris", "Lyon"]


def test_unparseable_answers_score_zero_instead_of_cancelling_the_evaluation():
    # A small model often answers in a form no adapter parses; DSPy stops after settings.max_errors (10)
    # such failures. Here 12 of 16 words get prose, 4 get a parseable answer: the mean must be 4/16.
    words = [f"w{i}x" for i in range(16)]
    good = set(words[:4])

    def respond(prompt, s):
        word = re.findall(r"\[\[ ## word ## \]\]\n(\w+)", prompt)[-1]
        if word in good:
            return f"[[ ## reversed ## ]]\n{word[::-1]}\n\n[[ ## completed ## ]]"
        return "I think the answer is a word."

    exs = [dspy.Example(word=w, reversed=w[::-1]).with_inputs("word") for w in words]
    with dspy.context(lm=dspy_lm(ScriptedLM(respond), max_tokens=20)):
        score = evaluate_program(dspy.Predict("word -> reversed"), exs, metric)
    assert score == pytest.approx(sum(w in good for w in words) / len(words))
