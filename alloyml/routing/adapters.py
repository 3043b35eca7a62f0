"""Stages: a model that answers queries, and what each call costs.

Any model becomes an `Answerer` (`answer(queries) -> [(text, tokens)]`) through an adapter chosen by
the first registered predicate that accepts it: language models of `alloyml.models.lm` (alloyml's own,
Hugging Face causal LMs such as SmolLM2, litellm chat endpoints, scripted LMs), fitted scikit-learn
estimators, plain functions. For serving from a stored plan, `build_answerer(spec)` builds one from a
JSON spec whose `kind` is registered with `@model_kind`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from alloyml.errors import ConfigError, InvalidInputError


class Answerer(Protocol):
    def answer(self, queries: Sequence[str]) -> list[tuple[str, int]]:
        """One (answer text, tokens used) per query."""


@dataclass(frozen=True)
class Stage:
    """A model and its price: a call costs `cost_per_call + cost_per_token * tokens`."""

    name: str
    model: Answerer
    cost_per_call: float = 0.0
    cost_per_token: float = 0.0

    def __post_init__(self):
        if self.cost_per_call < 0 or self.cost_per_token < 0:
            raise InvalidInputError(f"stage {self.name!r}: costs must be >= 0")

    def answer(self, queries: Sequence[str]) -> list[tuple[str, float]]:
        """One (answer text, cost) per query."""
        answers = self.model.answer(queries)
        return [(text, self.cost_per_call + self.cost_per_token * tokens) for text, tokens in answers]


class ConstantModel:
    """A stub that returns `text` after `delay_s` seconds, using `tokens` tokens: for benchmarks of the
    routing machinery alone."""

    def __init__(self, text: str = "", delay_s: float = 0.0, tokens: int = 0):
        self.text = text
        self.delay_s = delay_s
        self.tokens = tokens

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int]]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return [(self.text, self.tokens)] * len(queries)


class LMAnswerer:
    """A `LanguageModel` (anything with `generate` returning `Generation`s): greedy, one sample."""

    def __init__(self, lm, max_tokens: int = 64, stop: Sequence[str] = ()):
        self.lm = lm
        self.max_tokens = max_tokens
        self.stop = tuple(stop)

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int]]:
        generations = self.lm.generate(list(queries), max_tokens=self.max_tokens, stop=list(self.stop) or None)
        return [(g.text, g.total_tokens) for g in generations]


class SklearnAnswerer:
    """A fitted scikit-learn estimator (a pipeline over raw text, say): the answer is `str(predict)`."""

    def __init__(self, estimator):
        self.estimator = estimator

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int]]:
        return [(str(label), 0) for label in self.estimator.predict(list(queries))]


class FunctionAnswerer:
    """A plain function `fn(query) -> text`."""

    def __init__(self, fn: Callable[[str], str]):
        self.fn = fn

    def answer(self, queries: Sequence[str]) -> list[tuple[str, int]]:
        return [(str(self.fn(q)), 0) for q in queries]


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


_KINDS: dict[str, Callable[..., Answerer]] = {}


def model_kind(kind: str):
    """Register a builder of answerers from JSON specs `{"kind": kind, ...params}`."""

    def register(build):
        _KINDS[kind] = build
        return build

    return register


@model_kind("constant")
def _constant(text: str = "", delay_s: float = 0.0, tokens: int = 0) -> Answerer:
    return ConstantModel(text, delay_s, tokens)


@model_kind("hf")
def _hf(path: str, max_tokens: int = 64) -> Answerer:
    from alloyml.models.lm import HFCausalLM

    return LMAnswerer(HFCausalLM.from_pretrained(path), max_tokens)


@model_kind("smollm2")
def _smollm2(max_tokens: int = 64) -> Answerer:
    from alloyml.models.lm import load_smollm2

    return LMAnswerer(load_smollm2(), max_tokens)


@model_kind("litellm")
def _litellm(max_tokens: int = 64, **config) -> Answerer:
    from alloyml.models.lm import LiteLLMChat

    return LMAnswerer(LiteLLMChat(config), max_tokens)


def build_stage(name: str, spec: dict) -> Stage:
    """A stage from `{"kind": ..., "cost_per_call": ..., "cost_per_token": ..., **model params}`."""
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind not in _KINDS:
        raise ConfigError(f"model {name!r}: unknown kind {kind!r}; known: {sorted(_KINDS)}")
    cost_per_call = float(params.pop("cost_per_call", 0.0))
    cost_per_token = float(params.pop("cost_per_token", 0.0))
    try:
        model = _KINDS[kind](**params)
    except TypeError as err:
        raise ConfigError(f"model {name!r} of kind {kind!r}: {err}") from err
    return Stage(name, model, cost_per_call, cost_per_token)
