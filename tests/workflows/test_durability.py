"""kill -9 of the driver in the middle of a workflow, then resume (from Python, and from the CLI): steps
that had completed never run again, the killed step runs once more, the result is right."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alloyml.workflows import resume
from tests.waiting import process_alive, wait_until
from tests.workflows import steps_for_tests as steps

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]

DRIVER = """
import sys
from alloyml.platform.client import Platform
from alloyml.workflows import submit
from tests.workflows.test_durability import gated_diamond
platform = Platform(db_url=sys.argv[1], home=sys.argv[2])
handle = submit(platform, gated_diamond(sys.argv[3], sys.argv[4]), {"n": 5})
print(handle.id, flush=True)
handle.wait()
"""


def gated_diamond(log: str, gate: str):
    """load -> (scale x2, scale_2 x3 which waits for `gate`) -> total."""
    from alloyml.workflows import Input, Workflow

    wf = Workflow("gated-diamond")
    a = wf.add(steps.load, n=Input("n"), log=log)
    b = wf.add(steps.scale, x=a, factor=2.0, log=log, tag="b")
    c = wf.add(steps.scale, x=a, factor=3.0, log=log, tag="c", gate=gate)
    wf.add(steps.total, a=b, b=c, log=log)
    return wf


@pytest.mark.parametrize("resume_with", ["python", "cli"])
def test_kill_driver_then_resume_never_reruns_done_steps(platform, log, tmp_path, ray_session, resume_with,
                                                         monkeypatch):
    if resume_with == "cli" and not platform.settings.db_url.startswith("sqlite"):
        pytest.skip("the CLI path is exercised once, on SQLite")
    gate = tmp_path / "gate"
    # The driver joins the session's Ray, so killing it also ends its Ray job (and the gated task).
    env = dict(os.environ, ALLOYML_RAY_ADDRESS=ray_session.get_runtime_context().gcs_address,
               PYTHONPATH=str(REPO))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, platform.settings.db_url, str(platform.settings.home),
                               log, str(gate)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        workflow_id = int(driver.stdout.readline())
        expected = {"load": "done", "scale": "done", "scale_2": "running", "total": "pending"}

        def at_gate_or_dead():  # the gated task has started on a worker (or the driver died trying)
            states = {s.name: s.state for s in platform.store.workflow_steps(workflow_id)}
            return driver.poll() is not None or (states == expected and Path(f"{gate}.pid").exists())

        wait_until(at_gate_or_dead, 90, message="driver reaching the gate")
        assert driver.poll() is None, "driver never reached the gate"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert platform.store.get_workflow(workflow_id).status == "running"  # as the dead driver left it
    # Ray ends a dead driver's tasks asynchronously; open the gate only once the gated task's worker is gone,
    # or a surviving task could complete it a second time.
    orphan = int(Path(f"{gate}.pid").read_text())
    wait_until(lambda: not process_alive(orphan), 60, interval=0.1, message="Ray ending the killed driver's task")
    gate.touch()

    if resume_with == "python":
        result = resume(workflow_id, platform).result(timeout=120)
    else:  # `alloyml workflow resume ID`, in this process so it shares the session's Ray
        from alloyml.cli import main

        monkeypatch.setenv("ALLOYML_HOME", str(platform.settings.home))
        monkeypatch.setenv("ALLOYML_DB_URL", platform.settings.db_url)
        assert main(["workflow", "resume", str(workflow_id), "--quiet"]) == 0
        result = resume(workflow_id, platform).result(timeout=10)  # done: returned as stored

    x = np.arange(5.0)
    parts = (float((2 * x).sum()), float((3 * x).sum()))
    assert result == {"sum": parts[0] + parts[1], "parts": parts}
    ran = [tag for tag, _, _ in steps.log_lines(log)]
    assert sorted(ran) == ["b", "c", "load", "total"]  # each completed exactly once across both drivers
    attempts = {s.name: s.attempts for s in platform.store.workflow_steps(workflow_id)}
    assert attempts == {"load": 1, "scale": 1, "scale_2": 2, "total": 1}
    runs = [r for r in platform.store.list_runs(kind="workflow") if r.workflow_id == workflow_id]
    # the killed driver's run is settled by the resume (issue 17: it used to stay 'running' forever)
    assert sorted(r.status for r in runs) == ["done", "failed"]


@pytest.mark.slow
def test_detached_driver_process_finishes_the_workflow(sqlite_platform, log, tmp_path, ray_session, monkeypatch):
    """submit(detach=True) drives the workflow in a separate `alloyml workflow resume` process."""
    from alloyml.workflows import submit

    monkeypatch.setenv("ALLOYML_RAY_ADDRESS", ray_session.get_runtime_context().gcs_address)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    gate = tmp_path / "gate"
    gate.touch()
    handle = submit(sqlite_platform, gated_diamond(log, str(gate)), {"n": 4}, detach=True)
    result = handle.result(timeout=180)
    x = np.arange(4.0)
    assert result["sum"] == float(5 * x.sum())
    assert sorted(tag for tag, _, _ in steps.log_lines(log)) == ["b", "c", "load", "total"]
    # releasing the lease is the driver's last write, after the status
    wait_until(lambda: sqlite_platform.store.workflow_lease(handle.id).driver is None, 30, message="lease released")
    runs = [r for r in sqlite_platform.store.list_runs(kind="workflow") if r.workflow_id == handle.id]
    assert [r.status for r in runs] == ["done"]
