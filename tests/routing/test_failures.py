"""The stage failure policy alone (no Ray): timeouts, retries with doubling backoff, the breaker's states."""

import asyncio
import time

import pytest

from alloyml.errors import InvalidInputError
from alloyml.routing.failures import CircuitBreaker, FailurePolicy, StageFailedError, call_with_policy


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_reset():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, reset_s=10.0, clock=clock)
    for _ in range(2):
        breaker.failure()
    breaker.success()  # a success resets the count
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.t = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow() and not breaker.allow()  # one trial call at a time
    breaker.failure()  # the trial failed: open again for another reset_s
    assert breaker.state == "open"
    clock.t = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_retries_with_doubling_backoff_then_success():
    attempts = []

    async def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionRefusedError("down")
        return "ok"

    errors = []
    policy = FailurePolicy(timeout_s=1.0, retries=2, backoff_s=0.05)
    breaker = CircuitBreaker(2, 60)
    assert asyncio.run(call_with_policy(flaky, policy, breaker, errors.append)) == "ok"
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(attempts) == 3 and gaps[0] >= 0.05 and gaps[1] >= 0.1
    assert [type(e) for e in errors] == [ConnectionRefusedError] * 2 and breaker.state == "closed"


def test_timeout_counts_as_failure_and_opens_breaker():
    async def hangs():
        await asyncio.sleep(10)

    policy = FailurePolicy(timeout_s=0.05, retries=0)
    breaker = CircuitBreaker(1, 60)
    start = time.monotonic()
    with pytest.raises(StageFailedError, match="TimeoutError"):
        asyncio.run(call_with_policy(hangs, policy, breaker))
    assert time.monotonic() - start < 1.0 and breaker.state == "open"
    with pytest.raises(StageFailedError, match="breaker open"):
        asyncio.run(call_with_policy(hangs, policy, breaker))


def test_bad_policy_is_refused():
    with pytest.raises(InvalidInputError, match="failure policy"):
        FailurePolicy(timeout_s=0)


def test_long_texts_are_scored_off_the_event_loop():
    """18.6: while a long query is scored, the ingress's event loop keeps running other requests."""
    pytest.importorskip("ray.serve")
    from alloyml.routing.serve import INLINE_SCORE_MAX_CHARS, CascadeIngress

    class SlowScorer:
        def predict_proba(self, queries, answers, models):
            time.sleep(0.5)  # stands in for tokenising megabytes; a blocked loop could not tick meanwhile
            return [0.5]

    ingress = object.__new__(CascadeIngress.func_or_class)
    ingress.scorer = SlowScorer()

    async def scenario(query):
        ticks = []

        async def ticker():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        score = await ingress._score(query, "answer", "m")
        task.cancel()
        return score, len(ticks)

    score, ticks = asyncio.run(scenario("x" * (INLINE_SCORE_MAX_CHARS + 1)))
    assert score == 0.5 and ticks >= 20  # ~50 ticks in 0.5 s when the loop is free
    _, ticks_inline = asyncio.run(scenario("short"))
    assert ticks_inline <= 2  # a short text is scored inline: the loop waits (microseconds for real scorers)
