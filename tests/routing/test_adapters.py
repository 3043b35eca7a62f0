"""Stage adapters: alloyml LMs, sklearn estimators, functions, JSON specs; the budget guard; batched logs."""

import threading

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import make_pipeline

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.lm import Price, ScriptedLM, word_tokens
from alloyml.routing.adapters import Stage, as_answerer, build_stage
from alloyml.routing.guard import BudgetGuard
from alloyml.routing.request_log import BatchLogger


def test_lm_stage_charges_per_token():
    lm = ScriptedLM(lambda prompt, sample: prompt.upper() + " !")
    stage = Stage("shout", lm, Price(per_call=0.5, per_prompt_token=0.01, per_completion_token=0.03))
    (text, cost), = stage.answer(["two words"])
    assert text == "TWO WORDS !"
    prompt, completion = len(word_tokens("two words")), len(word_tokens("TWO WORDS !"))
    assert (prompt, completion) == (2, 3)
    assert cost == pytest.approx(0.5 + 0.01 * 2 + 0.03 * 3)


def test_sklearn_and_function_adapters():
    texts, labels = ["good movie", "bad movie", "great film", "awful film"], ["pos", "neg", "pos", "neg"]
    pipe = make_pipeline(CountVectorizer(), MultinomialNB()).fit(texts, labels)
    answers = as_answerer(pipe).answer(["good film", "awful movie"])
    assert answers == [(p, 0, 0) for p in pipe.predict(["good film", "awful movie"])]
    assert as_answerer(len).answer(["abc"]) == [("3", 0, 0)]
    with pytest.raises(InvalidInputError, match="cannot use int"):
        as_answerer(3)


def test_stage_from_json_spec():
    stage = build_stage("stub", {"kind": "constant", "text": "42", "tokens": 7, "cost_per_token": 2.0})
    assert stage.answer(["a", "b"]) == [("42", 14.0), ("42", 14.0)]
    priced = build_stage("stub", {"kind": "constant", "text": "42", "tokens": 7,
                                  "price": {"per_call": 1.0, "per_completion_token": 0.5}})
    assert priced.answer(["a"]) == [("42", 1.0 + 0.5 * 7)]
    llm = build_stage("remote", {"kind": "litellm", "model": "openai/gpt-4o-mini", "mock_response": "hi"})
    assert llm.model.lm.config.model == "openai/gpt-4o-mini"  # configuration only: nothing is sent
    with pytest.raises(ConfigError, match="unknown kind 'onnx'"):
        build_stage("x", {"kind": "onnx"})
    with pytest.raises(ConfigError, match="of kind 'constant'"):
        build_stage("x", {"kind": "constant", "colour": "red"})


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_budget_guard_steps_down_and_back_up():
    clock = _Clock()
    guard = BudgetGuard(budget=5.0, point_costs=[2.0, 4.0, 8.0], start=2, window_s=10.0, min_requests=4, clock=clock)
    for _ in range(3):
        guard.record(8.0)
    assert guard.point == 2  # fewer than min_requests: no judgement yet
    guard.record(8.0)
    assert guard.point == 1 and guard.state().moves_down == 1 and guard.state().window_requests == 0
    for _ in range(4):
        guard.record(6.0)  # still above budget at point 1
    assert guard.point == 0
    guard.record(8.0, point=1)  # a request that started before the move does not count
    assert guard.state().window_requests == 0
    for _ in range(4):
        guard.record(2.0)  # 2.0 * 4/2 = 4 <= 5: the dearer point would fit
    assert guard.point == 1 and guard.state().moves_up == 1
    for _ in range(4):
        guard.record(4.5)  # 4.5 * 8/4 = 9 > 5: stay
    assert guard.point == 1
    clock.now = 100.0  # the window slides: old requests drop out
    assert guard.state().window_requests == 0 and guard.state().window_mean_cost is None


def test_batch_logger_delivers_every_record_in_bounded_batches():
    batches, lock = [], threading.Lock()

    def sink(batch):
        with lock:
            batches.append(list(batch))

    logger = BatchLogger(sink, batch_size=7, flush_interval_s=0.05)
    threads = [threading.Thread(target=lambda k=k: [logger.log({"i": k * 100 + j}) for j in range(50)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.close()
    seen = sorted(r["i"] for b in batches for r in b)
    assert seen == sorted(k * 100 + j for k in range(4) for j in range(50))
    assert max(len(b) for b in batches) <= 7 and logger.logged == 200

    failing = BatchLogger(lambda batch: 1 / 0, batch_size=3)
    for i in range(5):
        failing.log({"i": i})
    failing.close()
    assert failing.errors == 5 and failing.logged == 0


def test_scorer_fast_path_equals_vectorizer():
    from alloyml.routing.cascade import FrugalCascade
    from alloyml.routing.scorer import _flat, scorer_from_dict
    from alloyml.routing.synthetic import make_logged_responses

    logs = make_logged_responses(120, 3, seed=5)
    scorer = scorer_from_dict(FrugalCascade(budget=50.0, n_thresholds=4, folds=2).fit(logs).plan_.scorer)
    q, a, m = _flat(logs, np.arange(40))
    batch = scorer.predict_proba(q, a, m)  # HashingVectorizer path
    one_by_one = np.concatenate([scorer.predict_proba(q[i : i + 1], a[i : i + 1], m[i : i + 1]) for i in range(len(q))])
    np.testing.assert_allclose(one_by_one, batch, rtol=1e-12)


def test_scorer_on_all_correct_answers_is_constant_laplace():
    from alloyml.routing.scorer import TextScorer, scorer_from_dict

    scorer = TextScorer().fit(["q1", "q2", "q3"], ["a", "b", "c"], ["m", "m", "m"], [True, True, True])
    np.testing.assert_allclose(scorer.predict_proba(["x", "y"], ["z", "w"], ["m", "n"]), [0.8, 0.8])
    restored = scorer_from_dict(scorer.to_dict())
    np.testing.assert_allclose(restored.predict_proba(["x"], ["z"], ["m"]), [0.8])
    wrong = TextScorer().fit(["q"] * 4, ["a"] * 4, ["m"] * 4, [False] * 4)
    np.testing.assert_allclose(wrong.predict_proba(["q"], ["a"], ["m"]), [1 / 6])
