"""Budgeted inference tuning: both pruning rules are safe, so the search returns what brute force returns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alloyml.automl.inference import (
    InferenceSpace,
    any_correct,
    majority_vote,
    tune_inference,
)
from alloyml.automl.prompting import Example
from alloyml.errors import InvalidInputError
from alloyml.lm import TOKEN_COUNT, Price, ScriptedLM


def _noisy_echo_lm(noise_words: int):
    """Answers the last word of the prompt, right with probability falling in temperature, then rambles
    a random number of words (so completion cost varies per prompt and per sample)."""

    def respond(prompt, s):
        answer = prompt.split()[-1]
        if s.rng.random() < s.temperature * 0.4:
            answer = "wrong"
        filler = " ".join(["la"] * int(s.rng.integers(0, noise_words + 1)))
        return f"{answer}\n{filler}"

    return ScriptedLM(respond)


def _brute_force(lm, examples, space, budget, utility, price, seed=0):
    """Every configuration on every example: (mean utility, mean cost) per config."""
    out = []
    for cfg in space.configs():
        gens = lm.generate(
            [cfg.template.format(instruction="", input=ex.input) for ex in examples],
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            stop=cfg.stop,
            seed=seed,
        )
        utils = [float(utility(g.texts, ex.output)) for g, ex in zip(gens, examples, strict=True)]
        costs = [price.per_prompt_token * g.prompt_tokens + price.per_completion_token * g.completion_tokens
                 for g in gens]
        out.append((np.mean(utils), np.mean(costs)))
    return out


EXAMPLES = [Example(f"say {w}", w) for w in ["red", "green", "blue", "cyan", "pink", "gold", "gray"]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budget=st.floats(min_value=3.0, max_value=60.0),
    noise=st.integers(min_value=0, max_value=12),
    prompt_price=st.sampled_from([0.5, 1.0, 2.0]),
    long_prefix=st.integers(min_value=0, max_value=20),
    initial=st.integers(min_value=1, max_value=4),
    n_examples=st.integers(min_value=1, max_value=7),
)
def test_pruning_never_discards_a_config_within_budget(budget, noise, prompt_price, long_prefix, initial, n_examples):
    lm = _noisy_echo_lm(noise)
    examples = EXAMPLES[:n_examples]
    space = InferenceSpace(
        n=[1, 3],
        temperature=[0.0, 1.0],
        max_tokens=[2, 20],
        stop=[(), ("\n",)],
        templates=["{input}", "context " * long_prefix + "{input}"],
    )
    price = Price(per_prompt_token=prompt_price, per_completion_token=1.0)
    utility = majority_vote("exact")
    result = tune_inference(lm, examples, space, budget=budget, utility=utility, price=price, initial_examples=initial)
    truth = _brute_force(lm, examples, space, budget, utility, price)
    assert len(result.trials) == len(truth)
    for trial, (util, cost) in zip(result.trials, truth, strict=True):
        if cost <= budget:  # within budget: never pruned for cost, and never marked over budget
            assert trial.status in ("completed", "pruned_dominated"), (trial, cost)
        else:
            assert trial.status in ("pruned_cost", "over_budget", "pruned_dominated"), (trial, cost)
        if trial.status == "completed":
            assert trial.metrics["utility"] == pytest.approx(util)
            assert trial.metrics["mean_cost"] == pytest.approx(cost)
    feasible = [(u, -c, -i) for i, (u, c) in enumerate(truth) if c <= budget]
    if not feasible:
        assert result.best is None
    else:
        u, neg_c, neg_i = max(feasible)
        assert result.best == space.configs()[-neg_i]
        assert result.best_utility == pytest.approx(u) and result.best_cost == pytest.approx(-neg_c)


def test_cost_pruning_saves_tokens_against_exhaustive_search():
    lm = _noisy_echo_lm(30)
    space = InferenceSpace(n=[1, 5], temperature=[0.0, 0.7], max_tokens=[4, 40], stop=[(), ("\n",)])
    examples = EXAMPLES * 3
    result = tune_inference(lm, examples, space, budget=8.0, initial_examples=1)
    exhaustive = _brute_force(lm, examples, space, 8.0, majority_vote(), TOKEN_COUNT)
    spent_exhaustive = sum(c for _, c in exhaustive) * len(examples)
    assert result.status_counts.get("pruned_cost", 0) > 0
    assert result.tuning_cost < 0.5 * spent_exhaustive
    # The stop string makes the cheap greedy config exact: utility 1 at cost 2 (prompt) + 1 (answer).
    assert result.best.stop == ("\n",) and result.best_utility == 1.0 and result.best_cost == 3.0


def test_prompt_alone_over_budget_is_pruned_before_any_call():
    calls = []
    lm = ScriptedLM(lambda p, s: calls.append(p) or "x")
    space = InferenceSpace(templates=["word " * 10 + "{input}"])
    result = tune_inference(lm, EXAMPLES, space, budget=5.0)
    assert calls == [] and result.best is None
    assert [t.status for t in result.trials] == ["pruned_cost"] and result.tuning_cost == 0.0


def test_trials_reach_the_callback_and_utilities():
    seen = []
    lm = _noisy_echo_lm(2)
    space = InferenceSpace(n=[1, 3], temperature=[0.0, 1.0])
    result = tune_inference(lm, EXAMPLES, space, budget=100.0, on_trial=seen.append)
    assert seen == result.trials and len(seen) == 3  # n=3 at temperature 0 is not a config
    assert any_correct("exact")(["no", "yes"], "yes") == 1.0
    assert majority_vote("exact")(["a", "b", "b"], "b") == 1.0
    assert majority_vote("exact")(["a", "b"], "b") == 0.0  # tie goes to the earliest


def test_bad_arguments_fail_early():
    lm = ScriptedLM(lambda p, s: "")
    with pytest.raises(InvalidInputError, match="budget"):
        tune_inference(lm, EXAMPLES, InferenceSpace(), budget=0)
    with pytest.raises(InvalidInputError, match="examples"):
        tune_inference(lm, [], InferenceSpace(), budget=1)
    with pytest.raises(ValueError, match="input"):
        InferenceSpace(templates=["no placeholder"])


@pytest.mark.slow
def test_pruning_is_safe_on_smollm2():
    """The same guarantee on a real chat model: its `count_tokens` must equal what `generate` charges."""
    from alloyml.automl.tasks import get_task
    from alloyml.lm import load_smollm2

    lm = load_smollm2()
    task = get_task("plural")
    examples = list(task.examples[:3])
    space = InferenceSpace(max_tokens=[4, 12], stop=[(), (".",)], templates=["{instruction} {input}"])
    utility = majority_vote(task.metric)
    prompts = [f"{task.instruction} {ex.input}" for ex in examples]
    gens = lm.generate(prompts, max_tokens=4)
    assert [g.prompt_tokens for g in gens] == [lm.count_tokens(p) for p in prompts]
    budget = float(np.mean([g.total_tokens for g in gens])) + 2.0
    result = tune_inference(lm, examples, space, budget=budget, instruction=task.instruction, utility=utility)
    for trial, cfg in zip(result.trials, space.configs(), strict=True):
        full = lm.generate(prompts, max_tokens=cfg.max_tokens, stop=cfg.stop)
        cost = np.mean([g.total_tokens for g in full])
        if trial.status == "pruned_cost":
            assert cost > budget
        if cost <= budget:
            assert trial.status in ("completed", "pruned_dominated")


def test_tuning_an_alloyml_recurrent_lm_matches_brute_force():
    """The same search over a tiny alloyml LinearLM (byte tokens) through its `RecurrentLM` adapter."""
    import torch

    from alloyml.lm import RecurrentLM
    from alloyml.models import LinearLM, ModelConfig

    torch.manual_seed(0)
    model = LinearLM(ModelConfig(d_model=32, n_layers=1, n_heads=2, mixer="linear_attn", ffn="none"))
    lm = RecurrentLM(model, name="tiny")
    examples = EXAMPLES[:4]
    space = InferenceSpace(max_tokens=[2, 9], stop=[(), ("e",)], templates=["{input}", "Q: {input} A:"])
    utility = lambda texts, target: float(len(texts[0]) % 2)  # any [0, 1] utility will do
    truth = _brute_force(lm, examples, space, 0, utility, TOKEN_COUNT)
    budget = float(np.median([c for _, c in truth]))
    result = tune_inference(lm, examples, space, budget=budget, utility=utility, initial_examples=1)
    for trial, (_, cost) in zip(result.trials, truth, strict=True):
        assert (trial.status in ("completed", "pruned_dominated")) == (cost <= budget), (trial, cost)
    best = max((u, -c, -i) for i, (u, c) in enumerate(truth) if c <= budget)
    assert result.best == space.configs()[-best[2]]
