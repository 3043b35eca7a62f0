"""Small pieces every page uses: stopping with an explanation when there is nothing to show, and picking one
record from a list."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import streamlit as st

T = TypeVar("T")


def stop_unless(condition, message: str) -> None:
    """End the page with `message` (what to do to get data) when `condition` is falsy."""
    if not condition:
        st.info(message)
        st.stop()


def pick(label: str, records: Sequence[T], describe: Callable[[T], str]) -> T:
    """A select box over records that have an `.id`; the first record is the default."""
    by_id = {record.id: record for record in records}
    return by_id[st.selectbox(label, list(by_id), format_func=lambda i: describe(by_id[i]))]
