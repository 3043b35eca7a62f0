"""The one price type: arithmetic against hand-computed costs, bad rates refused, and the rate names of
plans and configs written before it (routing's cost_per_call / cost_per_token, automl's prompt / completion)
still load to the same costs."""

from __future__ import annotations

import math

import pytest

from alloyml.errors import AlloyError, InvalidInputError
from alloyml.lm import TOKEN_COUNT, Price


def test_cost_is_per_call_plus_per_token_rates():
    price = Price(per_call=0.25, per_prompt_token=0.001, per_completion_token=0.004)
    # 0.25 + 0.001 * 120 + 0.004 * 30 = 0.25 + 0.12 + 0.12
    assert price.cost(120, 30) == pytest.approx(0.49)
    assert price.cost(120, 30, calls=3) == pytest.approx(0.75 + 0.12 + 0.12)
    assert price.cost(0, 0) == 0.25
    assert Price().cost(1_000, 1_000) == 0.0  # unset rates are free
    assert TOKEN_COUNT.cost(17, 5) == 22  # cost is the token count


@pytest.mark.parametrize("rates", [{"per_call": -1.0}, {"per_prompt_token": math.inf},
                                   {"per_completion_token": math.nan}, {"per_token": 1.0}])
def test_bad_rates_are_refused_naming_the_field(rates):
    with pytest.raises(InvalidInputError) as err:
        Price(**rates)
    assert isinstance(err.value, AlloyError) and next(iter(rates)) in str(err.value)


def test_bad_counts_are_refused():
    for counts in [(-1, 0), (0, math.nan), (math.inf, 0)]:
        with pytest.raises(InvalidInputError, match="tokens"):
            TOKEN_COUNT.cost(*counts)


def test_routing_names_load_as_aliases():
    old = Price(cost_per_call=0.5, cost_per_token=0.01)  # one rate for every token
    assert old == Price(per_call=0.5, per_prompt_token=0.01, per_completion_token=0.01)
    assert old.cost(2, 3) == pytest.approx(0.5 + 0.01 * 5)  # what Stage charged for 5 tokens


def test_automl_names_load_as_aliases_with_the_old_default_of_one():
    assert Price(prompt=2.0, completion=0.5) == Price(per_prompt_token=2.0, per_completion_token=0.5)
    # TokenPrice defaulted each rate to 1: an old config that set only one keeps its meaning
    assert Price.model_validate({"prompt": 2.0}) == Price(per_prompt_token=2.0, per_completion_token=1.0)
    assert Price.model_validate({"completion": 3.0}).cost(4, 1) == 4 * 1.0 + 3.0


def test_an_old_and_a_new_name_for_one_rate_is_refused():
    with pytest.raises(InvalidInputError, match="per_call"):
        Price(cost_per_call=1.0, per_call=2.0)
    with pytest.raises(InvalidInputError, match="per_prompt_token"):
        Price(prompt=1.0, per_prompt_token=2.0)


def test_stored_configs_with_old_names_still_load(tmp_path):
    """A tune config and a cascade model spec as they were written before `Price`."""
    from alloyml.automl.config import InferenceTuningConfig
    from alloyml.routing.adapters import build_stage

    config = InferenceTuningConfig.model_validate({
        "model": {"kind": "constant"}, "task": "plural", "space": {}, "budget": 10, "price": {"prompt": 0.5},
    })
    assert config.price == Price(per_prompt_token=0.5, per_completion_token=1.0)
    assert config.tune_kwargs()["price"] is config.price
    default = InferenceTuningConfig.model_validate({"model": {"kind": "constant"}, "task": "plural", "space": {},
                                                    "budget": 10})
    assert default.price == TOKEN_COUNT

    stage = build_stage("m0", {"kind": "constant", "text": "a", "tokens": 4, "cost_per_call": 2, "cost_per_token": 0.5})
    assert stage.price == Price(per_call=2, per_prompt_token=0.5, per_completion_token=0.5)
    assert stage.answer(["q"]) == [("a", 2 + 0.5 * 4)]
