"""A merge-search metric named by dotted path in the CLI tests: it peaks where the merged `w` is 1.5."""

from __future__ import annotations

TARGET = 1.5


def closeness(state) -> float:
    return -float(((state["w"].double() - TARGET) ** 2).sum())
