"""Running workflows on the session's Ray: results, parallel branches, retries with backoff, failure,
cancellation — each checked against the steps' own side-effect log and the store's records."""

from __future__ import annotations

import time

import numpy as np
import pytest

from alloyml.errors import WorkflowError
from alloyml.workflows import Input, Workflow, submit
from tests.waiting import process_alive, wait_until
from tests.workflows import steps_for_tests as steps
from tests.workflows.test_definition import diamond

pytestmark = pytest.mark.ray


def _warm_workers(ray, n: int = 2) -> None:
    """Start n Ray workers: starting one takes seconds on a loaded machine, and a branch that waits for a
    worker to start would not overlap its sibling for reasons that have nothing to do with the driver."""
    nap = ray.remote(num_cpus=1)(_nap)
    ray.get([nap.remote(0.5) for _ in range(n)])


def _nap(seconds: float) -> None:
    time.sleep(seconds)


def test_diamond_result_outputs_and_parallel_branches_overlap(platform, log, ray_session):
    _warm_workers(ray_session)
    wf = Workflow("diamond")
    a = wf.add(steps.load, n=Input("n"), log=log)
    b = wf.add(steps.scale, x=a, factor=2.0, log=log, tag="b", sleep_s=2.0)
    c = wf.add(steps.scale, x=a, factor=3.0, log=log, tag="c", sleep_s=2.0)
    wf.add(steps.total, a=b, b=c, log=log)
    started = time.monotonic()
    handle = submit(platform, wf, {"n": 6})
    assert time.monotonic() - started < 5.0 and handle.status() in ("pending", "running")  # returns at once
    result = handle.result(timeout=120)
    x = np.arange(6.0)
    parts = (float((2 * x).sum()), float((3 * x).sum()))
    assert result == {"sum": parts[0] + parts[1], "parts": parts}
    np.testing.assert_array_equal(handle.output("scale_2"), 3 * x)
    records = {s.name: s for s in handle.steps()}
    assert {s.state for s in records.values()} == {"done"} and {s.attempts for s in records.values()} == {1}
    # the branches' recorded intervals overlap, and so do the ones the steps logged themselves
    b_rec, c_rec = records["scale"], records["scale_2"]
    assert max(b_rec.started_at, c_rec.started_at) < min(b_rec.finished_at, c_rec.finished_at)
    (_, b0, b1), (_, c0, c1) = steps.log_lines(log, "b")[0], steps.log_lines(log, "c")[0]
    assert max(b0, c0) < min(b1, c1)
    assert abs((b_rec.finished_at - b_rec.started_at).total_seconds() - (b1 - b0)) < 0.1
    assert records["total"].started_at >= max(b_rec.finished_at, c_rec.finished_at)
    assert sorted(t for t, _, _ in steps.log_lines(log)) == ["b", "c", "load", "total"]
    workflow_runs = [r for r in platform.store.list_runs(kind="workflow") if r.workflow_id == handle.id]
    assert [r.status for r in workflow_runs] == ["done"]
    assert platform.store.workflow_lease(handle.id).driver is None  # released


def test_retry_with_backoff_then_success(sqlite_platform, log, ray_session):
    wf = Workflow("flaky")
    wf.add(steps.flaky, log=log, failures=2)
    handle = submit(sqlite_platform, wf)
    assert handle.result(timeout=120) == 3
    (record,) = handle.steps()
    assert record.state == "done" and record.attempts == 3 and record.error is None
    attempts = steps.log_lines(log, "flaky")
    assert len(attempts) == 3
    gaps = [attempts[k + 1][1] - attempts[k][2] for k in range(2)]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6  # retry_backoff_s * 2**(k-1)


def test_failure_after_retries_stores_traceback_and_stops_cleanly(sqlite_platform, log, ray_session):
    wf = Workflow("fails")
    bad = wf.add(steps.always_fails, log=log)
    wf.add(steps.sleeper, seconds=1.5, log=log, tag="sibling")  # independent: allowed to finish
    wf.add(steps.total, a=bad, b=bad, log=log)  # downstream of the failure: never starts
    wf.output = bad
    handle = submit(sqlite_platform, wf)
    assert handle.wait(timeout=120) == "failed"
    records = {s.name: s for s in handle.steps()}
    assert records["always_fails"].state == "failed" and records["always_fails"].attempts == 2
    assert "Traceback (most recent call last)" in records["always_fails"].error
    assert "RuntimeError: boom" in records["always_fails"].error
    assert records["sleeper"].state == "done" and records["total"].state == "cancelled"
    assert len(steps.log_lines(log, "always_fails")) == 2 and steps.log_lines(log, "total") == []
    workflow = sqlite_platform.store.get_workflow(handle.id)
    assert "failed after 2 attempt(s)" in workflow.error and "RuntimeError: boom" in workflow.error
    with pytest.raises(WorkflowError, match="boom"):
        handle.result()


def test_unstorable_output_fails_without_retry(sqlite_platform, log, ray_session):
    wf = Workflow("unsafe")
    wf.add(steps.unsafe_output, log=log)
    handle = submit(sqlite_platform, wf)
    assert handle.wait(timeout=120) == "failed"
    (record,) = handle.steps()
    assert record.attempts == 1 and "UnsafeValueError" in record.error and "builtins.object" in record.error


def test_cancel_stops_running_steps(sqlite_platform, log, ray_session, tmp_path):
    wf = Workflow("cancel-me")
    a = wf.add(steps.load, n=4, log=log)
    blocked = wf.add(steps.scale, x=a, factor=1.0, log=log, tag="blocked", gate=str(tmp_path / "never"))
    wf.add(steps.total, a=blocked, b=blocked, log=log)
    handle = submit(sqlite_platform, wf)
    wait_until(lambda: {s.name: s.state for s in handle.steps()}["scale"] == "running", 60, message="scale running")
    wait_until((tmp_path / "never.pid").exists, 60, message="the gated task started on a worker")
    started = time.monotonic()
    assert handle.cancel(timeout=30) == "cancelled"
    assert time.monotonic() - started < 10
    states = {s.name: s.state for s in handle.steps()}
    assert states == {"load": "done", "scale": "cancelled", "total": "cancelled"}
    # Cancelling kills the gated task's worker; one that survived would log once the gate opens.
    worker = int((tmp_path / "never.pid").read_text())
    wait_until(lambda: not process_alive(worker), 30, message="the cancelled task's worker to end")
    (tmp_path / "never").touch()
    assert [t for t, _, _ in steps.log_lines(log)] == ["load"]
    with pytest.raises(WorkflowError, match="cancelled"):
        handle.result()


def test_resume_of_failed_workflow_keeps_done_steps(sqlite_platform, log, ray_session, tmp_path):
    """After a failure is fixed (here: a step's inputs become valid), resume reruns only what is not done."""
    from alloyml.workflows import resume

    wf = diamond(log)
    gate = tmp_path / "gate"
    wf.nodes["scale_2"].args["gate"] = str(gate)
    handle = submit(sqlite_platform, wf, {"n": 3})
    wait_until(lambda: {s.name: s.state for s in handle.steps()}["scale"] == "done", 60, message="scale done")
    handle.cancel(timeout=30)
    gate.touch()
    assert resume(handle.id, sqlite_platform).result(timeout=120)["sum"] == 2 * 3 + 3 * 3
    assert sorted(t for t, _, _ in steps.log_lines(log)) == ["b", "c", "load", "total"]


def test_stop_driving_leaves_a_resumable_workflow(sqlite_platform, log, ray_session, tmp_path):
    """What Ctrl-C in `alloyml workflow resume` does: the driver stops, the workflow waits for `resume`."""
    from alloyml.workflows import resume

    gate = tmp_path / "gate"
    wf = diamond(log)
    wf.nodes["scale_2"].args["gate"] = str(gate)
    handle = submit(sqlite_platform, wf, {"n": 3})
    expected = {"load": "done", "scale": "done", "scale_2": "running", "total": "pending"}
    wait_until(lambda: {s.name: s.state for s in handle.steps()} == expected, 60, message=f"states {expected}")
    handle.stop_driving()
    assert handle.status() == "running" and sqlite_platform.store.workflow_lease(handle.id).driver is None
    with pytest.raises(WorkflowError, match="no driver"):
        handle.wait(timeout=5)
    gate.touch()
    assert resume(handle.id, sqlite_platform).result(timeout=120)["sum"] == 2 * 3 + 3 * 3
    assert {s.name: s.attempts for s in handle.steps()} == {"load": 1, "scale": 1, "scale_2": 2, "total": 1}
    assert sorted(t for t, _, _ in steps.log_lines(log)) == ["b", "c", "load", "total"]
