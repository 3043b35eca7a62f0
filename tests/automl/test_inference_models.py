"""Model selection: tune_inference over several priced models equals a brute force over model x settings;
a total tuning budget stops the search."""

from __future__ import annotations

import numpy as np
import pytest

from alloyml.automl.inference import InferenceSpace, majority_vote, tune_inference
from alloyml.errors import InvalidInputError
from alloyml.lm import Price, ScriptedLM

from .test_inference import EXAMPLES


def _model(error_rate: float, ramble: int):
    """Answers the prompt's last word, wrong with probability error_rate (more at high temperature)."""

    def respond(prompt, s):
        answer = prompt.split()[-1]
        if s.rng.random() < error_rate * (1 + s.temperature):
            answer = "wrong"
        return answer + "\n" + " ".join(["la"] * int(s.rng.integers(0, ramble + 1)))

    return ScriptedLM(respond)


MODELS = {"small": _model(0.45, 3), "big": _model(0.05, 8)}
PRICES = {"small": Price(per_prompt_token=0.2, per_completion_token=0.4),
          "big": Price(per_call=1.0, per_prompt_token=1.0, per_completion_token=2.0)}
SPACE = InferenceSpace(n=[1, 3], temperature=[0.0, 0.8], max_tokens=[2, 10], stop=[(), ("\n",)])


def _brute_force(examples, utility):
    """(mean utility, mean cost) of every (model, config), models in the mapping's order."""
    out = []
    for name, lm in MODELS.items():
        for cfg in SPACE.configs():
            gens = lm.generate([ex.input for ex in examples], **cfg.sampling(), seed=0)
            utils = [utility(g.texts, ex.output) for g, ex in zip(gens, examples, strict=True)]
            costs = [PRICES[name].cost(g.prompt_tokens, g.completion_tokens) for g in gens]
            out.append((name, cfg, float(np.mean(utils)), float(np.mean(costs))))
    return out


def test_model_and_settings_chosen_as_brute_force_would():
    examples = EXAMPLES * 3
    utility = majority_vote()
    truth = _brute_force(examples, utility)
    assert {n for n, *_ in truth} == {"small", "big"}
    costs = sorted(c for *_, c in truth)
    chosen_models = set()
    for budget in costs[::2]:
        result = tune_inference(MODELS, examples, SPACE, budget=budget, price=PRICES, utility=utility,
                                initial_examples=1)
        feasible = [(u, -c, -i) for i, (_, _, u, c) in enumerate(truth) if c <= budget]
        u, neg_c, neg_i = max(feasible)
        name, cfg, *_ = truth[-neg_i]
        assert result.best == cfg.model_copy(update={"model": name})
        assert result.best_utility == pytest.approx(u) and result.best_cost == pytest.approx(-neg_c)
        chosen_models.add(result.best.model)
        assert len(result.trials) == len(truth)
    assert chosen_models == {"small", "big"}  # a tight budget picks the cheap model, a loose one the good one


def test_a_total_tuning_budget_stops_the_search():
    examples = EXAMPLES * 3
    full = tune_inference(MODELS, examples, SPACE, budget=1e9, price=PRICES, initial_examples=1)
    assert full.complete and full.tuning_cost > 0
    cap = full.tuning_cost / 4
    capped = tune_inference(MODELS, examples, SPACE, budget=1e9, price=PRICES, initial_examples=1,
                            max_tuning_cost=cap)
    assert not capped.complete and cap <= capped.tuning_cost < full.tuning_cost
    assert "stopped_tuning_budget" in capped.status_counts
    # it stops at the first call after the cap: spend over the cap is at most one chunk of one configuration
    worst_chunk = max(t.cost for t in full.trials)
    assert capped.tuning_cost <= cap + worst_chunk


def test_model_selection_arguments_are_checked():
    with pytest.raises(InvalidInputError, match="same models"):
        tune_inference(MODELS, EXAMPLES, SPACE, budget=10, price={"small": PRICES["small"]})
    with pytest.raises(InvalidInputError, match="single model"):
        tune_inference(MODELS["small"], EXAMPLES, SPACE, budget=10, price=PRICES)
    with pytest.raises(InvalidInputError, match="max_tuning_cost"):
        tune_inference(MODELS, EXAMPLES, SPACE, budget=10, price=PRICES, max_tuning_cost=float("nan"))
