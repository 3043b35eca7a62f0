"""Stages: a model that answers queries, and what each call costs.

Any model becomes an `Answerer` (`answer(queries) -> [(text, prompt_tokens, completion_tokens)]`) through
an adapter chosen by the first registered predicate that accepts it: language models of `alloyml.lm`
(alloyml's own, Hugging Face causal LMs such as SmolLM2, litellm chat endpoints, scripted and constant
LMs), fitted scikit-learn estimators, plain functions. A `Stage` prices each call with an `alloyml.lm.Price`.
For serving from a stored plan, `build_stage(name, spec)` builds one from a JSON spec: an `alloyml.lm`
model spec plus the stage's own keys (`price`, `max_tokens`, `stop`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alloyml.errors import ConfigError, InvalidInputError
from alloyml.lm import Price, build_lm, parse_lm_spec
from alloyml.yaml_config import validation_problems


class Answerer(Protocol):
    def answer(self, queries: Sequence[str]) -> list[tuple[str, int, int]]:
        """One (answer text, prompt tokens, completion tokens) per query."""


@dataclass(frozen=True)
class Stage:
    """A model (anything `as_answerer` accepts) and its price: a call costs
    `price.cost(prompt_tokens, completion_tokens)`."""

    name: str
    model: Any
    price: Price = field(default_factory=Price)

    def __post_init__(self):
        if not isinstance(self.price, Price):
            raise InvalidInputError(f"stage {self.name!r}: price must be an alloyml.lm.Price, "
                                    f"got {type(self.price).__name__}")
        object.__setattr__(self, "model", as_answerer(self.model))

    def answer(self, queries: Sequence[str]) -> list[tuple[str, float]]:
        """One (answer text, cost) per query."""
        return [(text, self.price.cost(prompt, completion)) for text, prompt, completion in self.model.answer(queries)]


class LMAnswerer:
    """A `LanguageModel` (anything with `generate` returning `Generation`s): greedy, one sample."""

    def __init__(self, lm, max_tokens: int = 64, stop: Sequence[str] = ()):
        self.lm = lm
        self.max_tokens = max_tokens
        self.stop = tuple(stop)

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int, int]]:
        generations = self.lm.generate(list(queries), max_tokens=self.max_tokens, stop=list(self.stop) or None)
        return [(g.text, g.prompt_tokens, g.completion_tokens) for g in generations]


class SklearnAnswerer:
    """A fitted scikit-learn estimator (a pipeline over raw text, say): the answer is `str(predict)`."""

    def __init__(self, estimator):
        self.estimator = estimator

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int, int]]:
        return [(str(label), 0, 0) for label in self.estimator.predict(list(queries))]


class FunctionAnswerer:
    """A plain function `fn(query) -> text`."""

    def __init__(self, fn: Callable[[str], str]):
        self.fn = fn

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int, int]]:
        return [(str(self.fn(q)), 0, 0) for q in queries]


_ADAPTERS: list[tuple[Callable[[object], bool], Callable[[object], Answerer]]] = []


def adapter(accepts: Callable[[object], bool]):
    """Register an adapter for the objects `accepts` says yes to (checked in registration order)."""

    def register(make):
        _ADAPTERS.append((accepts, make))
        return make

    return register


adapter(lambda obj: callable(getattr(obj, "answer", None)))(lambda obj: obj)
adapter(lambda obj: callable(getattr(obj, "generate", None)))(LMAnswerer)
adapter(lambda obj: callable(getattr(obj, "predict", None)))(SklearnAnswerer)
adapter(callable)(FunctionAnswerer)


def as_answerer(model) -> Answerer:
    """`model` behind the `Answerer` interface."""
    for accepts, make in _ADAPTERS:
        if accepts(model):
            return make(model)
    raise InvalidInputError(
        f"cannot use {type(model).__name__} as a stage model: expected an alloyml LanguageModel, a fitted "
        "sklearn estimator, an object with answer(queries) or a function of the query"
    )


class StageOptions(BaseModel):
    """The keys of a stage spec that are not the model's: its price and how it is asked.

    Plans written before `Price` name the rates `cost_per_call` / `cost_per_token` beside the model keys;
    they are read as `price`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    price: Price = Field(default_factory=Price)
    max_tokens: int = Field(64, ge=1)
    stop: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _old_price_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and _OLD_PRICE_KEYS & set(data):
            if "price" in data:
                raise ValueError(f"give the price once: either price or {sorted(_OLD_PRICE_KEYS)}")
            old = {k: v for k, v in data.items() if k in _OLD_PRICE_KEYS}
            data = {k: v for k, v in data.items() if k not in _OLD_PRICE_KEYS} | {"price": Price(**old)}
        return data


_OLD_PRICE_KEYS = {"cost_per_call", "cost_per_token"}
_STAGE_KEYS = set(StageOptions.model_fields) | _OLD_PRICE_KEYS


def parse_stage_spec(name: str, spec: dict) -> tuple[StageOptions, BaseModel]:
    """(stage options, validated model spec) of `{"kind": ..., **model fields, "price": ..., "max_tokens": ...}`;
    ConfigError naming the model and each bad key."""
    if not isinstance(spec, dict):
        raise ConfigError(f"model {name!r}: expected a JSON object spec, got {type(spec).__name__}")
    try:
        options = StageOptions.model_validate({k: v for k, v in spec.items() if k in _STAGE_KEYS})
    except (ValidationError, InvalidInputError) as err:
        detail = validation_problems(err) if isinstance(err, ValidationError) else str(err)
        raise ConfigError(f"model {name!r}: {detail}") from None
    model = parse_lm_spec({k: v for k, v in spec.items() if k not in _STAGE_KEYS}, what=f"model {name!r}")
    return options, model


def build_stage(name: str, spec: dict) -> Stage:
    """The stage a spec describes (see `parse_stage_spec`), its model built with `alloyml.lm.build_lm`."""
    options, model = parse_stage_spec(name, spec)
    return Stage(name, LMAnswerer(build_lm(model), options.max_tokens, options.stop), options.price)
