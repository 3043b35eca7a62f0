"""Schedules: a built-in workflow, its inputs and a cron timetable, kept in the store.

The store holds the rows; this module validates what goes in (cron, time zone, workflow name, inputs) and
fires a slot: claim the slot's firing row (at most once, whichever scheduler gets there first), submit
the workflow, record the outcome. Inputs are stored encoded exactly as workflow inputs are
(`codec.encode_input`): arrays as artifacts, the store's location as a reference, never a database URL.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from alloyml.cron import check_cron, check_timezone, next_slot
from alloyml.errors import InvalidInputError
from alloyml.platform import entities as e
from alloyml.platform.orm import utcnow
from alloyml.workflows.api import _refuse_credentials, submit
from alloyml.workflows.builtin import get_builtin
from alloyml.workflows.codec import decode, encode_input
from alloyml.workflows.recording import store_location

log = logging.getLogger("alloyml.scheduler")

# submit(platform, schedule) -> workflow id; the scheduler's default drives it in a detached process.
SubmitFunction = Callable[[object, e.Schedule], int]


def add_schedule(platform, name: str, workflow: str, cron: str, *, inputs: dict | None = None,
                 timezone: str = "UTC", catch_up: str = "latest", now: dt.datetime | None = None) -> e.Schedule:
    """Store a schedule that runs built-in `workflow` with `inputs` at every slot of `cron` (on the wall
    clock of `timezone`), from `now` (naive UTC; default the current time) on. A workflow input named
    `store` defaults to this store's location."""
    cron = check_cron(cron)
    check_timezone(timezone)
    if catch_up not in e.CATCH_UP_POLICIES:
        raise InvalidInputError(f"catch-up policy {catch_up!r} is not one of {e.CATCH_UP_POLICIES}")
    built = get_builtin(workflow).build()
    inputs = dict(inputs or {})
    if "store" in built.inputs and "store" not in inputs:
        inputs["store"] = store_location(platform)
    built.check_inputs(inputs)
    encoded = {key: encode_input(value, platform.artifacts, f"input {key!r}") for key, value in inputs.items()}
    _refuse_credentials(platform, encoded)
    return platform.store.add_schedule(name, workflow, cron, timezone, encoded, catch_up, now=now)


def pause_schedule(platform, name: str) -> e.Schedule:
    return platform.store.set_schedule_paused(name, True)


def resume_schedule(platform, name: str, now: dt.datetime | None = None) -> e.Schedule:
    """Slots that fell in the pause are not caught up: the timetable restarts from `now` (default: the
    current time)."""
    return platform.store.set_schedule_paused(name, False, now=now)


def remove_schedule(platform, name: str) -> None:
    platform.store.remove_schedule(name)


def next_firing(schedule: e.Schedule, now: dt.datetime | None = None) -> dt.datetime | None:
    """The next slot after `now` (naive UTC), or None while paused."""
    return None if schedule.paused else next_slot(schedule.cron, schedule.timezone, now or utcnow())


def submit_scheduled(platform, schedule: e.Schedule, *, detach: bool = True) -> int:
    """The real submission: build the built-in, decode the stored inputs (the store reference becomes this
    process's store), submit. Detached by default, so the scheduler never drives workflows itself."""
    workflow = get_builtin(schedule.workflow).build()
    inputs = decode(schedule.inputs, platform.artifacts, store_location(platform))
    return submit(platform, workflow, inputs, detach=detach).id


def fire(platform, schedule: e.Schedule, slot: dt.datetime, *, submit_fn: SubmitFunction = submit_scheduled,
         missed: int = 0, manual: bool = False) -> e.ScheduleFiring | None:
    """Claim `slot` of `schedule` and submit its workflow; the recorded firing, or None when another
    scheduler (or an earlier tick) already claimed the slot. A failed submission is recorded as 'failed'
    with the error, never raised: one broken schedule must not stop the others."""
    firing_id = platform.store.claim_firing(schedule.id, slot, missed=missed, manual=manual)
    if firing_id is None:
        return None
    try:
        workflow_id = submit_fn(platform, schedule)
    except Exception as err:  # recorded on the firing row; the scheduler goes on
        log.warning("schedule %r slot %s: submission failed: %s", schedule.name, slot, err)
        return platform.store.finish_firing(firing_id, "failed", error=f"{type(err).__name__}: {err}")
    log.info("schedule %r slot %s: submitted workflow %s", schedule.name, slot, workflow_id)
    return platform.store.finish_firing(firing_id, "submitted", workflow_id=workflow_id)


def run_now(platform, name: str, *, submit_fn: SubmitFunction = submit_scheduled,
            now: dt.datetime | None = None) -> e.ScheduleFiring:
    """Fire a schedule once, now, outside its timetable (also while paused); recorded as a manual firing."""
    schedule = platform.store.get_schedule(name)
    slot = now or utcnow()
    # Timetable slots are whole minutes; a manual slot never is, so the two never collide on the unique key.
    slot = slot.replace(microsecond=slot.microsecond or 1)
    firing = fire(platform, schedule, slot, submit_fn=submit_fn, manual=True)
    if firing is None:
        raise InvalidInputError(f"schedule {name!r} was already fired at {slot}; try again")
    return firing
