"""The driver: runs one workflow's steps as Ray tasks and records every transition in the store.

Durability rests on three rules:

1. A step's output is written as an artifact first (content-addressed, renamed into place), then one
   transaction marks the step done *and* stores the output reference. A driver killed in between leaves
   the step not done; it runs again on resume. A step marked done never runs again.
2. One driver per workflow: the driver holds a lease in the store (`host:pid:token`, renewed every
   `HEARTBEAT_S`). `resume` takes over a lease whose holder is dead — its pid is gone on this host, or it
   has not renewed for `LEASE_S` — and refuses a live one.
3. On (re)start the driver resets every step that is not done to pending (`prepare`); steps then run in
   dependency order.

A step that raises (or runs past its `timeout_s`, and is then stopped) is retried after
`retry_backoff_s * 2**(k-1)` seconds, up to `max_retries` times, then marked failed with its traceback.
Infrastructure failures — the Ray worker or node died under the step — are retried on their own budget,
`max_infra_retries` (default 3), so a crashed worker does not fail a step that has no user retries.
Once a step has failed, no new step starts; steps already running are allowed to finish (their
outputs are kept, so a later `resume` does not redo them), steps never started become cancelled, and
the workflow becomes failed. Cancellation stops running steps at once (their Ray workers
are killed) and marks unfinished steps cancelled.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
import threading
import time
import traceback
import uuid

from alloyml.errors import WorkflowError
from alloyml.platform.orm import utcnow
from alloyml.platform.store import Store, WorkflowLease
from alloyml.workflows.codec import UnsafeValueError, decode, encode
from alloyml.workflows.graph import Input, StepRef, Workflow
from alloyml.workflows.recording import store_location

HEARTBEAT_S = 2.0
LEASE_S = 30.0
POLL_S = 0.2
CANCEL_ROUNDS = 10
TERMINAL = ("done", "failed", "cancelled")


def driver_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_is_live(lease: WorkflowLease) -> bool:
    """Whether the lease holder may still be driving: its pid is alive (same host) or it renewed recently."""
    if lease.driver is None:
        return False
    host, pid, _ = lease.driver.rsplit(":", 2)
    if host == socket.gethostname() and not _pid_alive(int(pid)):
        return False
    return lease.heartbeat_at is not None and (utcnow() - lease.heartbeat_at).total_seconds() < LEASE_S


def claim(store: Store, workflow_id: int, me: str) -> bool:
    """Take the workflow's lease for `me`; False when the workflow is done (nothing to drive). Raises if a
    live driver holds the lease. The status is checked in the same statement that takes the lease, so a
    workflow finishing meanwhile is not flipped back to running by a second driver."""
    lease = store.workflow_lease(workflow_id)
    if lease_is_live(lease):
        raise WorkflowError(f"workflow {workflow_id} is being driven by {lease.driver} (heartbeat "
                            f"{lease.heartbeat_at:%H:%M:%S} UTC); wait for it or cancel it")
    if store.claim_workflow(workflow_id, me, expected=lease.driver, unless_status=("done",)):
        return True
    if store.get_workflow(workflow_id).status == "done":
        return False
    raise WorkflowError(f"workflow {workflow_id} was claimed by another driver just now")


class LeaseLost(Exception):
    """Another driver took the workflow over; this one stops without writing anything more."""


class Driver:
    """Drives workflow `workflow_id` of `platform`'s store; `me` must already hold the lease (`claim`)."""

    def __init__(self, platform, workflow_id: int, workflow: Workflow, me: str):
        self.platform = platform
        self.store: Store = platform.store
        self.id = workflow_id
        self.workflow = workflow
        self.me = me
        self.done: dict[str, str] = {}  # step name -> output artifact key
        self.inputs: dict = {}  # input name -> ObjectRef
        self.outputs: dict = {}  # step name -> ObjectRef of its output, for its dependants
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop driving soon (e.g. on Ctrl-C): running steps are cancelled and the workflow is left as a
        killed driver would leave it, for `resume` to finish."""
        self._stop.set()

    def prepare(self) -> None:
        """Reset the steps a previous driver left unfinished and mark the workflow running. Called in the
        submitting thread before `run`, so the workflow reads 'running' as soon as submit/resume returns."""
        if self.store.get_workflow(self.id).status != "cancelling":
            self.store.settle_workflow(self.id, "running", steps_from=("running", "failed", "cancelled"),
                                       steps_to="pending")
        # We hold the lease, so a 'workflow' run still marked running belongs to a driver that died.
        for run in self.store.list_runs(kind="workflow", status="running", limit=10_000):
            if run.workflow_id == self.id:
                self.store.finish_run(run.id, status="failed",
                                      error="its driver stopped before the workflow finished (killed?); resumed")

    def run(self) -> str:
        """Run to a terminal state (or until the lease is lost); returns the workflow's status."""
        run = self.store.start_run("workflow", name=self.workflow.name, workflow_id=self.id)
        status, error = "failed", None
        try:
            status = self._run()
            return status
        except LeaseLost:
            status = "taken over by another driver"
            return self.store.get_workflow(self.id).status
        except BaseException:
            error = traceback.format_exc()
            self.store.settle_workflow(self.id, "failed", steps_from=("pending", "running"), steps_to="cancelled",
                                       error=f"the workflow driver crashed:\n{error}")
            raise
        finally:
            self.store.finish_run(run.id, status="done" if status == "done" else "failed",
                                  error=error or (None if status == "done" else f"workflow {status}"))
            self.store.claim_workflow(self.id, None, expected=self.me)

    # -- the loop --------------------------------------------------------------------------------------------
    def _run(self) -> str:
        import ray

        from alloyml.raycluster import ensure_ray

        ensure_ray()
        store, nodes = self.store, self.workflow.nodes
        record = store.get_workflow(self.id)
        if record.status == "cancelling":
            return self._cancel({})
        self.done = {s.name: s.output_artifact for s in store.workflow_steps(self.id) if s.state == "done"}
        own_store = store_location(self.platform)  # what a stored store reference resolves to
        self.inputs = {name: ray.put(value)
                       for name, value in decode(record.inputs, self.platform.artifacts, own_store).items()}
        pending = [name for name in nodes if name not in self.done]
        attempts: dict[str, int] = {}
        failures: dict[tuple[str, bool], int] = {}  # (step, infrastructure?) -> failures so far
        not_before: dict[str, float] = {}
        running: dict = {}  # ObjectRef of the outcome -> (step name, ObjectRef of the output)
        deadlines: dict = {}  # ObjectRef of the outcome -> monotonic time its step must end by
        failed: str | None = None
        last_beat = last_cancel_check = time.monotonic()
        while True:
            now = time.monotonic()
            if self._stop.is_set():
                self._cancel_tasks(running)
                return "stopped"
            if now - last_cancel_check >= POLL_S:  # a cancel request is seen within POLL_S
                if store.get_workflow(self.id).status == "cancelling":
                    return self._cancel(running)
                last_cancel_check = now
            if failed is None:
                for name in [n for n in pending if not_before.get(n, 0.0) <= now
                             and all(d in self.done for d in nodes[n].depends_on)]:
                    pending.remove(name)
                    attempts[name] = attempts.get(name, 0) + 1
                    submitted = self._submit(name)
                    running.update(submitted)
                    if nodes[name].step.options.timeout_s is not None:
                        deadlines.update({ref: now + nodes[name].step.options.timeout_s for ref in submitted})
            if not running:
                if failed is not None:
                    return self._settle_failed(failed)
                if not pending:
                    output = self.workflow.output_step
                    store.settle_workflow(self.id, "done", result_artifact=self.done[output])
                    return "done"
            wait_s = min([POLL_S] + [max(0.0, t - now) for n, t in not_before.items() if n in pending])
            if running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
                if ready:  # collect every outcome already in, not just the first
                    ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            else:
                ready = []
                time.sleep(wait_s)
            outcomes = [(ref, *running.pop(ref), None) for ref in ready]
            late = [ref for ref, deadline in deadlines.items() if ref in running and time.monotonic() > deadline]
            for ref in late:  # stopped like a cancelled step, then counted as a failed attempt
                name, output_ref = running.pop(ref)
                limit = nodes[name].step.options.timeout_s
                outcomes.append((ref, name, output_ref, _Failure(
                    f"step {name!r} ran past its timeout_s={limit} and was stopped", retryable=True)))
            if late:
                self._cancel_tasks({ref: None for ref in late})
            for outcome_ref, name, output_ref, error in outcomes:
                deadlines.pop(outcome_ref, None)
                error = error or self._complete(name, outcome_ref, output_ref)
                if error is None:
                    continue
                options = nodes[name].step.options
                key = (name, error.infrastructure)
                failures[key] = failures.get(key, 0) + 1
                budget = options.max_infra_retries if error.infrastructure else options.max_retries
                if failed is None and error.retryable and failures[key] <= budget:
                    store.update_step(self.id, name, state="pending", error=error.text)
                    not_before[name] = time.monotonic() + options.retry_backoff_s * 2 ** (failures[key] - 1)
                    pending.append(name)
                else:
                    store.update_step(self.id, name, state="failed", error=error.text, finished_at=utcnow())
                    failed = failed or name
            if time.monotonic() - last_beat > HEARTBEAT_S:
                if not store.heartbeat_workflow(self.id, self.me):
                    self._cancel_tasks(running)
                    raise LeaseLost
                last_beat = time.monotonic()

    def _submit(self, name: str) -> dict:
        node = self.workflow.nodes[name]
        names, values = [], []
        for arg, value in node.args.items():
            names.append(arg)
            values.append(self.inputs[value.name] if isinstance(value, Input)
                          else self._output_ref(value.name) if isinstance(value, StepRef) else value)
        self.store.update_step(self.id, name, state="running", started_at=utcnow(), finished_at=None,
                               increment_attempts=True)
        outcome_ref, output_ref = _remote_execute().options(
            num_returns=2, name=f"{self.workflow.name}.{name}", **node.step.options.ray_options()
        ).remote(node.step, names, *values)
        return {outcome_ref: (name, output_ref)}

    def _output_ref(self, name: str):
        """The output of done step `name` as an ObjectRef; loaded from its artifact after a resume."""
        if name not in self.outputs:
            import ray

            self.outputs[name] = ray.put(decode(self.platform.artifacts.get_json(self.done[name]),
                                                self.platform.artifacts))
        return self.outputs[name]

    def _complete(self, name: str, outcome_ref, output_ref) -> _Failure | None:
        """Record a finished task: done with its output artifact, or the failure to retry or record."""
        import ray

        try:
            outcome = ray.get(outcome_ref)
        except ray.exceptions.RayTaskError as err:  # raised by the task itself, outside the step's code
            return _Failure(f"{type(err).__name__}: {err}", retryable=True)
        except Exception as err:  # the worker or its node died, ran out of memory, lost the object
            return _Failure(f"infrastructure failure: {type(err).__name__}: {err}", retryable=True,
                            infrastructure=True)
        if outcome["error"] is not None:
            return _Failure(outcome["error"], retryable=True)
        try:
            tree = encode(ray.get(output_ref), self.platform.artifacts, f"the output of step {name!r}")
        except UnsafeValueError as err:
            return _Failure(f"{type(err).__name__}: {err}", retryable=False)
        key = self.platform.artifacts.put_json(tree, kind="workflow")
        self.store.update_step(self.id, name, state="done", output_artifact=key, error=None,
                               started_at=_from_timestamp(outcome["started"]),
                               finished_at=_from_timestamp(outcome["finished"]))
        self.done[name] = key
        self.outputs[name] = output_ref
        return None

    def _settle_failed(self, step_name: str) -> str:
        step = next(s for s in self.store.workflow_steps(self.id) if s.name == step_name)
        self.store.settle_workflow(
            self.id, "failed", steps_from=("pending",), steps_to="cancelled",
            step_error=f"not started: step {step_name!r} failed",
            error=f"step {step_name!r} failed after {step.attempts} attempt(s):\n{step.error}")
        return "failed"

    def _cancel(self, running: dict) -> str:
        self._cancel_tasks(running)
        self.store.settle_workflow(self.id, "cancelled", steps_from=("pending", "running"), steps_to="cancelled",
                                   step_error="cancelled by request", error="cancelled by request")
        return "cancelled"

    @staticmethod
    def _cancel_tasks(running: dict) -> None:
        import ray

        # Ray's cancel is best effort: one sent while a task is being handed to a worker can be lost, so
        # cancel again until every task has ended (killed workers end their tasks at once).
        unfinished = list(running)
        for _ in range(CANCEL_ROUNDS):
            if not unfinished:
                break
            for outcome_ref in unfinished:
                ray.cancel(outcome_ref, force=True)
            _, unfinished = ray.wait(unfinished, num_returns=len(unfinished), timeout=1.0)


class _Failure:
    def __init__(self, text: str, retryable: bool, infrastructure: bool = False):
        self.text = text
        self.retryable = retryable
        self.infrastructure = infrastructure


def _execute(step, names, *values):
    """Runs on a Ray worker: call the step, return (outcome, output). Ray resolves the ObjectRefs in
    `values` (top-level arguments) before the call. The worker measures the step's own start and end."""
    import ray

    started = time.time()
    try:
        output, error = step.fn(**dict(zip(names, values, strict=True))), None
    except Exception:
        output, error = None, traceback.format_exc()
    outcome = {"started": started, "finished": time.time(), "error": error,
               "node": ray.get_runtime_context().get_node_id()}
    return outcome, output


@functools.cache
def _remote_execute():
    """`_execute` as a Ray remote function, created once per process (after Ray is up)."""
    import ray

    return ray.remote(_execute)


def _from_timestamp(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
