"""Resume and wait at the edges: a workflow that finished is not driven again (the status is checked in the
statement that takes the lease), a killed driver's `workflow` run is settled by the next resume, and a
pending workflow with no driver is reported by `wait()` at once."""

from __future__ import annotations

import time

import pytest

from alloyml.errors import WorkflowError
from alloyml.workflows import WorkflowHandle, resume
from alloyml.workflows.api import _drive_in_thread
from tests.workflows.test_definition import diamond

DEAD_DRIVER = "no-such-host-alloyml:1:dead"  # another host, heartbeat long ago: a dead lease


def _record(store, log, n=3):
    wf = diamond(log)
    return wf, store.create_workflow(wf.name, {"n": n}, wf.to_spec(), wf.step_rows())


@pytest.mark.ray
def test_a_workflow_that_finished_meanwhile_is_not_driven_again(platform, log, ray_session):
    wf, record = _record(platform.store, log)
    platform.store.settle_workflow(record.id, "done")  # finished between resume's read and its claim
    handle = _drive_in_thread(platform, record.id, wf)
    assert handle.status() == "done" and handle.wait(timeout=5) == "done"
    assert platform.store.list_runs(kind="workflow") == []  # no second driver run recorded
    assert platform.store.workflow_lease(record.id).driver is None
    assert not platform.store.claim_workflow(record.id, "h:1:x", expected=None, unless_status=("done",))


@pytest.mark.ray
def test_resume_settles_the_run_row_of_a_killed_driver(platform, log, ray_session):
    store = platform.store
    _, record = _record(store, log)
    assert store.claim_workflow(record.id, DEAD_DRIVER, expected=None)
    store.settle_workflow(record.id, "running")
    orphan = store.start_run("workflow", name="diamond", workflow_id=record.id)  # left by the killed driver
    import alloyml.workflows.driver as driver

    driver_lease_s, driver.LEASE_S = driver.LEASE_S, 0.0  # the dead lease is stale at once
    try:
        handle = resume(record.id, platform)
    finally:
        driver.LEASE_S = driver_lease_s
    assert handle.wait(timeout=120) == "done"
    runs = {r.id: r for r in store.list_runs(kind="workflow")}
    assert runs[orphan.id].status == "failed" and "driver stopped" in runs[orphan.id].error
    assert [r.status for r in runs.values() if r.id != orphan.id] == ["done"]


def test_wait_reports_a_pending_workflow_without_a_driver_at_once(platform, log):
    _, record = _record(platform.store, log)  # recorded, but its driver died before taking the lease
    start = time.monotonic()
    with pytest.raises(WorkflowError, match="no driver is running it"):
        WorkflowHandle(platform, record.id).wait(timeout=20)
    assert time.monotonic() - start < 5
