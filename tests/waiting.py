"""Waiting in tests for something another process or thread does: poll a condition, never sleep a fixed time."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float, *, interval: float = 0.05, message: str = "",
               required: bool = True) -> T:  # fmt: skip
    """Call `condition()` every `interval` seconds until it returns something truthy, and return that.

    After `timeout` seconds: AssertionError with `message` (the last value seen), or, with
    `required=False`, the last value (for bounded clean-up waits that go on either way)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            assert not required, f"timed out after {timeout} s: {message or condition} (last: {value!r})"
            return value
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
