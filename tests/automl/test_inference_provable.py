"""Budgeted tuning stays exact for sampled models and declared utility ranges; trials stream; failures surface."""

from __future__ import annotations

import numpy as np
import pytest

from alloyml.automl.inference import AllTrialsFailedError, InferenceSpace, tune_inference
from alloyml.automl.prompting import Example
from alloyml.errors import InvalidInputError
from alloyml.lm import TOKEN_COUNT, HFCausalLM, ScriptedLM

from ..lm._tiny_hf import tiny_llama
from .test_inference import EXAMPLES, _brute_force, _noisy_echo_lm


def _word_overlap(texts: list[str], target: str) -> float:
    """Share of the samples that contain the target word: a [0, 1] utility that varies under sampling."""
    return float(np.mean([target in t.split() for t in texts]))


def _best(truth, budget):
    """Brute force's pick: highest utility within budget, then lowest cost, then first."""
    return max(((u, -c, -i) for i, (u, c) in enumerate(truth) if c <= budget), default=None)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_hf_model_tuning_equals_brute_force(seed):
    """A tiny HF Llama *sampling*: the tuner evaluates chunks of 1, 1, 2, 4, ... examples, brute force one call
    over all 10 (batches of 8 and 2): same utilities and costs per configuration, same choice."""
    model, tok = tiny_llama(seed=5)
    lm = HFCausalLM(model, tok, batch_size=8)
    words = ["a", "b", "c", "d", "e", "x", "y", "z"]
    rng = np.random.default_rng(seed)
    examples = [Example(" ".join(rng.choice(words, size=int(rng.integers(1, 5)))), str(rng.choice(words)))
                for _ in range(10)]
    space = InferenceSpace(n=[1, 3], temperature=[0.0, 1.3], top_p=[0.7, 1.0], max_tokens=[3],
                           templates=["{input}", "{input} . a"])
    truth = _brute_force(lm, examples, space, 0, _word_overlap, TOKEN_COUNT, seed=seed)
    budget = float(np.median([c for _, c in truth]))
    result = tune_inference(lm, examples, space, budget=budget, utility=_word_overlap, initial_examples=1,
                            seed=seed)
    configs = space.configs()
    assert len({u for u, _ in truth}) > 2  # sampling makes utilities differ across configurations
    u, neg_c, neg_i = _best(truth, budget)
    for trial, (ut, c) in zip(result.trials, truth, strict=True):
        done = int(trial.metrics["examples"])
        if trial.status == "completed":
            assert (trial.metrics["utility"], trial.metrics["mean_cost"]) == pytest.approx((ut, c), abs=1e-12)
        assert (trial.status == "pruned_cost") <= (c > budget), (trial, c)
        assert (trial.status == "pruned_dominated") <= (ut < u or c > budget), (trial, ut, c)
        assert (trial.status == "completed") == (done == len(examples) and c <= budget)
    assert result.best == configs[-neg_i]
    assert result.best_utility == pytest.approx(u, abs=1e-12) and result.best_cost == pytest.approx(-neg_c)


def test_utility_outside_the_declared_range_is_refused_and_a_declared_range_is_exact():
    lm = _noisy_echo_lm(6)
    space = InferenceSpace(n=[1, 3], temperature=[0.0, 0.5, 1.5], max_tokens=[3, 12], stop=[(), ("\n",)])
    examples = EXAMPLES * 2

    def five_point(texts, target):  # a 0-5 grade
        return 5.0 * float(np.mean([t.split()[0] == target if t.split() else False for t in texts]))

    with pytest.raises(InvalidInputError, match="utility_range"):
        tune_inference(lm, examples, space, budget=30.0, utility=five_point)
    with pytest.raises(InvalidInputError, match="utility_range"):
        tune_inference(lm, examples, space, budget=30.0, utility=five_point, utility_range=(1.0, 1.0))
    truth = _brute_force(lm, examples, space, 0, five_point, TOKEN_COUNT)
    costs = sorted(c for _, c in truth)
    for budget in costs[1::3]:
        result = tune_inference(lm, examples, space, budget=budget, utility=five_point, utility_range=(0, 5),
                                initial_examples=1)
        u, _, neg_i = _best(truth, budget)
        assert result.best == space.configs()[-neg_i] and result.best_utility == pytest.approx(u)


def test_greedy_configurations_are_not_crossed_with_top_p():
    space = InferenceSpace(n=[1, 2], temperature=[0.0, 0.7], top_p=[0.5, 0.9, 1.0], max_tokens=[4])
    configs = space.configs()
    greedy = [c for c in configs if c.temperature == 0.0]
    assert [(c.n, c.top_p) for c in greedy] == [(1, 1.0)]
    # the sampled part is the full product n x top_p
    assert sorted((c.n, c.top_p) for c in configs if c.temperature > 0) == sorted(
        (n, p) for n in (1, 2) for p in (0.5, 0.9, 1.0))
    assert len(set(configs)) == len(configs) == 1 + 6


def test_trials_stream_while_the_search_runs():
    calls = []
    lm = _noisy_echo_lm(8)
    counting = ScriptedLM(lambda p, s: calls.append(p) or lm.respond(p, s))
    space = InferenceSpace(n=[1, 3], temperature=[0.0, 1.0], max_tokens=[2, 30],
                           templates=["{input}", "x " * 9 + "{input}"])
    reports = []
    result = tune_inference(counting, EXAMPLES * 2, space, budget=12.0, initial_examples=1,
                            on_trial=lambda t: reports.append((t, len(calls))))
    assert sorted(t.trial_id for t, _ in reports) == sorted(t.trial_id for t in result.trials)
    assert len(reports) == len(result.trials)
    assert min(at for _, at in reports) < len(calls)  # some trial was handed over before the search ended
    # a callback that stops the search (a crash) still leaves the trials settled before it on record
    kept = []

    def crash(t):
        kept.append(t)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune_inference(counting, EXAMPLES * 2, space, budget=12.0, initial_examples=1, on_trial=crash)
    assert len(kept) == 1 and kept[0].status != "running"


def test_failing_configurations_are_recorded_and_all_failing_raises_their_error():
    def respond(prompt, s):
        if prompt.startswith("bad"):
            raise RuntimeError("backend down for bad prompts")
        return prompt.split()[-1]

    lm = ScriptedLM(respond)
    space = InferenceSpace(templates=["{input}", "bad {input}"])
    result = tune_inference(lm, EXAMPLES, space, budget=50.0)
    by_template = {t.config["template"]: t for t in result.trials}
    assert by_template["bad {input}"].status == "failed"
    assert "backend down" in by_template["bad {input}"].extra["error"]
    assert result.best.template == "{input}" and result.best_utility == 1.0  # the last word is the target
    with pytest.raises(AllTrialsFailedError, match="backend down") as info:
        tune_inference(lm, EXAMPLES, InferenceSpace(templates=["bad {input}", "bad: {input}"]), budget=50.0)
    assert isinstance(info.value.__cause__, RuntimeError)
