"""How a served cascade survives a failing stage: a per-call timeout, retries with exponential backoff,
and a circuit breaker that skips a stage after repeated failures, so its requests fall through to the
next stage at once instead of waiting out timeouts. Pure asyncio, no Ray, so it is tested alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from alloyml.errors import AlloyError, InvalidInputError


class StageFailedError(AlloyError):
    """A stage call failed after its retries (or its breaker is open)."""


class NoStageAnsweredError(AlloyError):
    """Every stage of the cascade failed for this request."""


@dataclass(frozen=True)
class FailurePolicy:
    """timeout_s: per attempt; retries: extra attempts after the first; backoff_s: wait before the first
    retry, doubled for each next one; breaker_failures: consecutive failed calls that open the breaker;
    breaker_reset_s: how long an open breaker skips the stage before letting one call through."""

    timeout_s: float = 30.0
    retries: int = 1
    backoff_s: float = 0.05
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0

    def __post_init__(self):
        if not (self.timeout_s > 0 and self.retries >= 0 and self.backoff_s >= 0 and self.breaker_failures >= 1
                and self.breaker_reset_s >= 0):
            raise InvalidInputError(f"invalid stage failure policy {asdict(self)}: timeouts > 0, counts >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


class CircuitBreaker:
    """Closed until `failures` consecutive failures, then open (calls skipped) for `reset_s`, then
    half-open: one call goes through and closes it again on success, reopens it on failure."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self.trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial_running:
            self.trial_running = True
            return True
        return False

    def success(self) -> None:
        self.consecutive, self.opened_at, self.trial_running = 0, None, False

    def failure(self) -> None:
        self.consecutive += 1
        self.trial_running = False
        if self.consecutive >= self.failures or self.opened_at is not None:
            self.opened_at = self.clock()


def describe(err: BaseException) -> str:
    """`Type: message` of the error a stage raised; Ray wraps it in a RayTaskError whose `cause` it is."""
    cause = getattr(err, "cause", None)
    err = cause if isinstance(cause, BaseException) else err
    return f"{type(err).__name__}: {err}"[:300]


async def call_with_policy(call: Callable[[], Awaitable], policy: FailurePolicy, breaker: CircuitBreaker,
                           on_error: Callable[[BaseException], None] | None = None):
    """`await call()` under the policy; raises StageFailedError when the breaker is open or every attempt
    failed (each failed attempt is reported to `on_error`)."""
    if not breaker.allow():
        raise StageFailedError("circuit breaker open")
    delay = policy.backoff_s
    last: BaseException | None = None
    for attempt in range(policy.retries + 1):
        if attempt:
            await asyncio.sleep(delay)
            delay *= 2
        try:
            result = await asyncio.wait_for(call(), policy.timeout_s)
        except asyncio.CancelledError:
            raise
        except BaseException as err:  # noqa: BLE001  any failure of the stage counts, whatever its type
            last = err if not isinstance(err, asyncio.TimeoutError) else TimeoutError(
                f"no answer within {policy.timeout_s} s")
            if on_error:
                on_error(last)
            continue
        breaker.success()
        return result
    breaker.failure()
    raise StageFailedError(f"failed after {policy.retries + 1} attempt(s): {describe(last)}") from last
