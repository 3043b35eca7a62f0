"""Answer metrics for instruction tasks: how a completion is compared with the expected output.

Small chat models wrap answers in prose ("The first letter is 'B'."), so besides exact match there is
`final_word`: the expected answer equals the completion's first or last word, after normalisation.
Metrics are registered by name; `get_metric` lists the known ones for an unknown name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from alloyml.errors import InvalidInputError

Metric = Callable[[str, str], float]
METRICS: dict[str, Metric] = {}

_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def metric(name: str):
    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return register


def get_metric(name: str | Metric) -> Metric:
    if callable(name):
        return name
    if name not in METRICS:
        raise InvalidInputError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name]


def normalize(text: str) -> str:
    """First non-empty line, lower-cased, without surrounding punctuation, quotes or spaces."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return _EDGE.sub("", line.strip().lower())


def _words(text: str) -> list[str]:
    return [w for w in (_EDGE.sub("", t) for t in normalize(text).split()) if w]


@metric("exact")
def exact_match(prediction: str, target: str) -> float:
    """1.0 when the normalised first line equals the normalised target."""
    return float(normalize(prediction) == normalize(target))


@metric("final_word")
def final_word_match(prediction: str, target: str) -> float:
    """1.0 when a one-word target is the first or the last word of the answer's first line."""
    words, want = _words(prediction), normalize(target)
    return float(bool(words) and want in (words[0], words[-1]))
