"""Submit an `alloyml` command to a Ray cluster through the Ray Jobs API (`http(s)://HOST:8265`).

The job's driver runs on the cluster's head, with the head's environment: its `ALLOYML_DB_URL`,
`ALLOYML_ARTIFACTS` and credentials, none of which the submitting laptop needs or sends. The laptop
needs only the address and, when the cluster has token authentication on (`RAY_AUTH_MODE=token`), the
token in `RAY_AUTH_TOKEN` (or the file `RAY_AUTH_TOKEN_PATH` / `~/.ray/auth_token`): Ray's SDK reads it and
sends it as a header; alloyml never reads, prints or stores it. What is stored with the job is the
entrypoint, which holds only the command's own arguments.
"""

from __future__ import annotations

import re
import shlex
import time

from alloyml.errors import WorkflowError

TERMINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
_SUBMITTED = re.compile(r"^workflow (\d+) submitted$", re.MULTILINE)


def job_client(address: str):
    """A Jobs API client for `address`; a cluster that cannot be reached or refuses the token raises
    WorkflowError naming the address."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001  ConnectionError, RuntimeError on 401/403, ...: one message
        raise WorkflowError(f"cannot reach the Ray Jobs API at {address}: {type(err).__name__}: {err}") from err


def submit_command(address: str, argv: list[str], *, submission_id: str | None = None) -> str:
    """Start `python -m alloyml.cli ARGV...` as a Ray job; returns the job's submission id."""
    entrypoint = shlex.join(["python", "-m", "alloyml.cli", *argv])
    client = job_client(address)
    try:
        return client.submit_job(entrypoint=entrypoint, submission_id=submission_id)
    except Exception as err:  # noqa: BLE001  a refused token surfaces here as RuntimeError
        raise WorkflowError(f"the Ray Jobs API at {address} refused the job: {type(err).__name__}: {err}") from err


def follow_job(address: str, job_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0,
               echo=print) -> tuple[str, int | None, str]:
    """Wait for job `job_id` to end, echoing its log as it grows; returns (state, workflow id the job
    printed or None, the whole log)."""
    client = job_client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        state = str(client.get_job_status(job_id)).rsplit(".", 1)[-1]
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            echo(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if state in TERMINAL_JOB_STATES:
            found = _SUBMITTED.search(logs)
            return state, int(found.group(1)) if found else None, logs
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"Ray job {job_id} at {address} is still {state} after {timeout_s} s")
        time.sleep(poll_s)
