"""Submit, resume and cancel workflows; `WorkflowHandle` follows one of them.

`submit` records the workflow and its inputs, then drives it in a background thread of the calling
process (a non-daemon thread, so a script that submits and returns still finishes the work) or, with
`detach=True`, in a detached `alloyml workflow resume` process that outlives the caller. Either way the
store holds everything needed to `resume` it from any process that can import its steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from alloyml.errors import InvalidInputError, WorkflowError
from alloyml.platform.settings import db_password
from alloyml.workflows.codec import decode, encode_input
from alloyml.workflows.driver import TERMINAL, Driver, claim, driver_identity, lease_is_live
from alloyml.workflows.graph import Workflow


class WorkflowHandle:
    """A submitted workflow: `status()`, `steps()`, `wait(timeout)`, `result(timeout)`, `cancel()`."""

    def __init__(self, platform, workflow_id: int, driver: Driver | None = None,
                 thread: threading.Thread | None = None, process: subprocess.Popen | None = None):
        self.platform = platform
        self.id = workflow_id
        self._driver = driver
        self._thread = thread
        self._process = process  # a detached driver started by this process

    def __repr__(self) -> str:
        return f"WorkflowHandle(id={self.id}, status={self.status()!r})"

    def status(self) -> str:
        """pending, running, cancelling, done, failed or cancelled."""
        return self.platform.store.get_workflow(self.id).status

    def steps(self):
        return self.platform.store.workflow_steps(self.id)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the workflow is done, failed or cancelled; returns that status. Raises TimeoutError
        after `timeout` seconds, and WorkflowError when its driver died (resume it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            workflow = self.platform.store.get_workflow(self.id)
            left = None if deadline is None else deadline - time.monotonic()
            if workflow.status in TERMINAL and (self._thread is None or not self._thread.is_alive()):
                return workflow.status
            if left is not None and left <= 0:
                raise TimeoutError(f"workflow {self.id} is still {workflow.status} after {timeout} s")
            if self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5 if left is None else min(left, 0.5))
                continue
            if self._process is not None and self._process.poll() is not None:
                workflow = self.platform.store.get_workflow(self.id)
                if workflow.status in TERMINAL:
                    continue
                raise WorkflowError(f"the detached driver of workflow {self.id} exited with code "
                                    f"{self._process.returncode} (log: {driver_log(self.platform, self.id)})")
            lease = self.platform.store.workflow_lease(self.id)
            # 'pending' without a lease is only normal while a detached driver of ours is starting up.
            starting = workflow.status == "pending" and self._process is not None
            if not starting and not lease_is_live(lease):
                raise WorkflowError(f"workflow {self.id} is {workflow.status} but no driver is running it; "
                                    f"run `alloyml workflow resume {self.id}`")
            time.sleep(0.1 if left is None else min(left, 0.1))

    def result(self, timeout: float | None = None):
        """The output of the workflow's output step, once done; raises WorkflowError if it failed or was
        cancelled (with the failing step's traceback)."""
        status = self.wait(timeout)
        workflow = self.platform.store.get_workflow(self.id)
        if status != "done":
            raise WorkflowError(f"workflow {self.id} {status}: {workflow.error}")
        return decode(self.platform.artifacts.get_json(workflow.result_artifact), self.platform.artifacts)

    def output(self, step_name: str):
        """The stored output of one done step."""
        step = next((s for s in self.steps() if s.name == step_name), None)
        if step is None or step.state != "done":
            raise InvalidInputError(f"workflow {self.id} has no done step named {step_name!r}")
        return decode(self.platform.artifacts.get_json(step.output_artifact), self.platform.artifacts)

    def stop_driving(self) -> None:
        """Stop this process's driver (running steps are cancelled), leaving the workflow for `resume`."""
        if self._driver is not None:
            self._driver.stop()
            self._thread.join()

    def cancel(self, timeout: float | None = 30.0) -> str:
        """Cancel and wait (up to `timeout`) for the driver to stop it; returns the final status."""
        status = cancel(self.id, self.platform)
        return self.wait(timeout) if status == "cancelling" else status


def submit(platform, workflow: Workflow, inputs: dict | None = None, *, detach: bool = False) -> WorkflowHandle:
    """Record `workflow` with `inputs` (name -> value) in `platform`'s store and start driving it; returns a
    `WorkflowHandle` at once. Submission lives here, not on `Platform`: the store records workflows but
    does not know how they run."""
    inputs = dict(inputs or {})
    workflow.check_inputs(inputs)
    spec = workflow.to_spec()
    if detach:
        Workflow.from_spec(workflow.name, spec)  # fails now, not in the child, if a step is not importable
        if any(node.step.ref.startswith("__main__:") for node in workflow.nodes.values()):
            raise InvalidInputError("detach=True needs steps defined in an importable module, not in __main__")
    encoded = {name: encode_input(value, platform.artifacts, f"input {name!r}") for name, value in inputs.items()}
    _refuse_credentials(platform, encoded)
    record = platform.store.create_workflow(workflow.name, encoded, spec, workflow.step_rows())
    if detach:
        return WorkflowHandle(platform, record.id, process=_spawn_resume(platform, record.id))
    return _drive_in_thread(platform, record.id, workflow)


def _refuse_credentials(platform, encoded: dict) -> None:
    """Inputs are stored in clear: one that holds the store's password (say, the URL itself) is refused."""
    password = db_password(platform.settings.db_url)
    if password and password in json.dumps(encoded):
        names = [name for name, tree in encoded.items() if password in json.dumps(tree)]
        raise InvalidInputError(f"workflow inputs {names} contain the database password, and inputs are stored "
                                "in clear; pass `alloyml.workflows.recording.store_location(platform)` instead")


def resume(workflow_id: int, platform=None) -> WorkflowHandle:
    """Drive an unfinished workflow again (after its driver died, or after it failed or was cancelled):
    steps that are done are kept, the rest run. A done workflow is returned as it is."""
    platform = platform or _default_platform()
    record = platform.store.get_workflow(workflow_id)
    if record.status == "done":
        return WorkflowHandle(platform, workflow_id)
    return _drive_in_thread(platform, workflow_id, Workflow.from_spec(record.name, record.spec))


def cancel(workflow_id: int, platform=None) -> str:
    """Ask for cancellation. A live driver stops the workflow ('cancelling' is returned); without one the
    workflow is marked cancelled here. A finished workflow keeps its status."""
    platform = platform or _default_platform()
    record = platform.store.request_workflow_cancel(workflow_id)
    if record.status != "cancelling":
        return record.status
    if lease_is_live(platform.store.workflow_lease(workflow_id)):
        return "cancelling"
    platform.store.settle_workflow(workflow_id, "cancelled", steps_from=("pending", "running"),
                                   steps_to="cancelled", step_error="cancelled by request",
                                   error="cancelled by request")
    return "cancelled"


def _drive_in_thread(platform, workflow_id: int, workflow: Workflow) -> WorkflowHandle:
    from alloyml.platform.client import Platform
    from alloyml.raycluster import ensure_ray

    me = driver_identity()
    if not claim(platform.store, workflow_id, me):  # finished meanwhile: nothing to drive
        return WorkflowHandle(platform, workflow_id)
    # The lease is held while Ray starts, so `wait()` elsewhere can tell "starting" from "driver died".
    try:
        ensure_ray()  # here, not in the thread: Ray installs signal handlers only from the main thread
    except BaseException:
        platform.store.claim_workflow(workflow_id, None, expected=me)
        raise
    # The driver has its own client so the caller may close theirs while the workflow runs.
    own = Platform(db_url=platform.settings.db_url, home=platform.settings.home,
                   artifacts=platform.settings.artifacts)
    driver = Driver(own, workflow_id, workflow, me)
    driver.prepare()

    def drive():
        try:
            driver.run()
        finally:
            own.close()

    thread = threading.Thread(target=drive, name=f"alloyml-workflow-{workflow_id}", daemon=False)
    thread.start()
    return WorkflowHandle(platform, workflow_id, driver, thread)


def driver_log(platform, workflow_id: int):
    """Where a detached driver writes its output."""
    return platform.settings.home / "logs" / f"workflow-{workflow_id}.log"


def _spawn_resume(platform, workflow_id: int) -> subprocess.Popen:
    env = dict(os.environ, ALLOYML_HOME=str(platform.settings.home), ALLOYML_DB_URL=platform.settings.db_url)
    if platform.settings.artifacts:
        env["ALLOYML_ARTIFACTS"] = platform.settings.artifacts
    log = driver_log(platform, workflow_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "alloyml.cli", "workflow", "resume", str(workflow_id), "--quiet"],
            env=env, cwd=os.getcwd(), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)


def _default_platform():
    from alloyml.platform.client import Platform

    return Platform()
