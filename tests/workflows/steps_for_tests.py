"""Steps used by the workflow tests. They live in an importable module because Ray workers, and `resume`
in another process, import steps by reference. Each step appends one line `<tag> <start> <end>` to a log
file when (and only when) it completes, so tests can count from side effects how often it ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from alloyml.workflows import step


def _log(log: str, tag: str, started: float) -> None:
    with open(log, "a") as handle:
        handle.write(f"{tag} {started!r} {time.time()!r}\n")
        handle.flush()
        os.fsync(handle.fileno())


def log_lines(log, tag: str | None = None) -> list[tuple[str, float, float]]:
    """(tag, start, end) of each logged completion, optionally of one tag."""
    path = Path(log)
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return [(t, float(a), float(b)) for t, a, b in rows if tag is None or t == tag]


@step
def load(n: int, log: str):
    started = time.time()
    _log(log, "load", started)
    return np.arange(n, dtype=np.float64)


@step
def scale(x, factor: float, log: str, tag: str, gate: str | None = None, sleep_s: float = 0.0):
    """x * factor; first waits for the file `gate` to exist (if given; the worker's pid is written to
    `<gate>.pid` meanwhile) and sleeps `sleep_s`."""
    started = time.time()
    if gate is not None:
        Path(f"{gate}.pid").write_text(str(os.getpid()))
    while gate is not None and not os.path.exists(gate):
        time.sleep(0.05)
    time.sleep(sleep_s)
    _log(log, tag, started)
    return np.asarray(x) * factor


@step
def total(a, b, log: str) -> dict:
    started = time.time()
    _log(log, "total", started)
    return {"sum": float(np.sum(a) + np.sum(b)), "parts": (float(np.sum(a)), float(np.sum(b)))}


@step(max_retries=2, retry_backoff_s=0.3)
def flaky(log: str, failures: int) -> int:
    """Fails the first `failures` attempts (counted from the log), then returns the attempt number."""
    started = time.time()
    attempt = len(log_lines(log, "flaky")) + 1
    _log(log, "flaky", started)
    if attempt <= failures:
        raise ValueError(f"flaky attempt {attempt} fails on purpose")
    return attempt


@step(max_retries=1, retry_backoff_s=0.1)
def always_fails(log: str):
    started = time.time()
    _log(log, "always_fails", started)
    raise RuntimeError("boom: always_fails fails on purpose")


@step
def sleeper(seconds: float, log: str, tag: str) -> float:
    started = time.time()
    time.sleep(seconds)
    _log(log, tag, started)
    return seconds


@step
def node_of(tag: str) -> str:
    """The id of the Ray node the step ran on."""
    import ray

    return ray.get_runtime_context().get_node_id()


@step(resources={"special": 1})
def on_special(tag: str) -> str:
    return node_of.fn(tag)


@step(resources={"head_only": 1})
def on_head(tag: str) -> str:
    return node_of.fn(tag)


@step
def unsafe_output(log: str):
    return object()


@step(retry_backoff_s=0.1)  # no user retries: only the infrastructure budget may retry it
def crashes_first(log: str, crashes: int) -> int:
    """Kills its own Ray worker (as an OOM kill or a lost node would) on the first `crashes` attempts."""
    attempt = len(log_lines(log, "crash")) + 1
    _log(log, "crash", time.time())
    if attempt <= crashes:
        os._exit(1)
    return attempt


@step(retry_backoff_s=0.1, max_infra_retries=1)
def always_crashes(log: str) -> None:
    _log(log, "crash", time.time())
    os._exit(1)


@step(timeout_s=20.0, max_retries=1, retry_backoff_s=0.1)
def slow_first(log: str, first_sleep_s: float) -> int:
    """Sleeps `first_sleep_s` on its first attempt (past its 20 s timeout, generous because the timeout runs
    from submission and a fresh Ray worker may take many seconds to start on a loaded machine), returns at
    once after that."""
    attempt = len(log_lines(log, "slow")) + 1
    _log(log, "slow", time.time())
    if attempt == 1:
        time.sleep(first_sleep_s)
    return attempt
