"""Infrastructure failures are retried on their own budget; a step past its timeout is stopped and counted
as a failed attempt."""

from __future__ import annotations

import time

import pytest

from alloyml.workflows import Workflow, submit
from tests.workflows import steps_for_tests as steps

pytestmark = pytest.mark.ray


def _run(platform, step_fn, **args):
    wf = Workflow(step_fn.__name__)
    wf.add(step_fn, **args)
    handle = submit(platform, wf)
    status = handle.wait(timeout=120)
    [record] = handle.steps()
    return handle, status, record


def test_a_crashed_worker_is_retried_though_the_step_has_no_retries(sqlite_platform, log, ray_session):
    handle, status, record = _run(sqlite_platform, steps.crashes_first, log=log, crashes=2)
    assert steps.crashes_first.options.max_retries == 0
    assert status == "done" and handle.result() == 3  # two crashes, then the third attempt ran
    assert record.attempts == 3 and len(steps.log_lines(log, "crash")) == 3


def test_the_infrastructure_budget_is_finite(sqlite_platform, log, ray_session):
    _, status, record = _run(sqlite_platform, steps.always_crashes, log=log)
    assert status == "failed" and record.attempts == 2  # max_infra_retries=1: one retry
    assert "infrastructure failure" in record.error


def test_a_step_past_its_timeout_is_stopped_and_retried(sqlite_platform, log, ray_session):
    start = time.monotonic()
    handle, status, record = _run(sqlite_platform, steps.slow_first, log=log, first_sleep_s=300.0)
    assert status == "done" and handle.result() == 2 and record.attempts == 2
    assert time.monotonic() - start < 150  # the 300 s first attempt was cut off at its 20 s timeout
    assert len(steps.log_lines(log, "slow")) == 2


def test_a_step_that_always_times_out_fails(sqlite_platform, log, ray_session):
    from alloyml.workflows import step

    wf = Workflow("always-slow")
    wf.add(step(timeout_s=0.5)(steps.sleeper.fn), seconds=60.0, log=log, tag="slow")
    start = time.monotonic()
    handle = submit(sqlite_platform, wf)
    assert handle.wait(timeout=60) == "failed"
    assert time.monotonic() - start < 30
    assert "ran past its timeout_s=0.5" in handle.steps()[0].error
    assert steps.log_lines(log, "slow") == []  # stopped before it could finish


def test_a_large_input_is_stored_as_an_artifact_not_inline(sqlite_platform, log, ray_session):
    import json

    import numpy as np

    from alloyml.workflows import Input

    xs = np.random.default_rng(0).random(200_000).tolist()  # ~4 MB of JSON
    wf = Workflow("large-input")
    wf.add(steps.total, a=Input("xs"), b=[1.0], log=log)
    handle = submit(sqlite_platform, wf, {"xs": xs})
    assert handle.result(timeout=120)["sum"] == np.sum(np.asarray(xs)) + 1.0
    stored = sqlite_platform.store.get_workflow(handle.id).inputs
    assert set(stored["xs"]) == {"__json__"} and len(json.dumps(stored)) < 500
