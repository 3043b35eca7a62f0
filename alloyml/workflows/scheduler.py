"""The scheduler loop: at each tick, fire the slots that came due, by each schedule's catch-up policy.

Nothing is held in memory between ticks: a schedule's progress is its latest recorded firing (or the time
it was created or resumed), so a restarted scheduler carries on where the last one stopped, and two
schedulers on one database fire each slot once (the firing row's unique key, see `schedules.fire`).
Firing is at most once per slot: a scheduler killed between claiming a slot and submitting leaves the
slot 'claimed', and it is not fired again.

Catch-up policies, for the slots that came due since the last firing (more than one only after downtime,
a pause excepted):

- skip: fire only slots at most `grace` old; the rest are recorded as one 'skipped' firing (the latest
  skipped slot, with how many earlier ones it stands for).
- latest: fire the most recent due slot once; the earlier ones are counted on its row (`missed`).
- all: fire every due slot, oldest first (at most `max_per_tick` per tick; the rest on the next ticks).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
from collections.abc import Callable

from alloyml.cron import slots
from alloyml.platform import entities as e
from alloyml.platform.orm import utcnow
from alloyml.workflows.schedules import SubmitFunction, fire, submit_scheduled

log = logging.getLogger("alloyml.scheduler")
DEFAULT_GRACE = dt.timedelta(seconds=60)


class Scheduler:
    """Fires due schedules of `platform`'s store. `clock` returns naive UTC (injectable for tests);
    `submit_fn(platform, schedule) -> workflow id` submits one firing."""

    def __init__(self, platform, *, clock: Callable[[], dt.datetime] = utcnow,
                 submit_fn: SubmitFunction = submit_scheduled, grace: dt.timedelta = DEFAULT_GRACE,
                 max_per_tick: int = 100):
        self.platform = platform
        self.clock = clock
        self.submit_fn = submit_fn
        self.grace = grace
        self.max_per_tick = max_per_tick

    def tick(self) -> list[e.ScheduleFiring]:
        """One pass over every active schedule; returns the firings this pass recorded."""
        now = self.clock()
        recorded = []
        for schedule in self.platform.store.list_schedules():
            if schedule.paused:
                continue
            try:
                recorded += self._fire_due(schedule, now)
            except Exception as err:  # a schedule that cannot be read or computed must not stop the rest
                log.error("schedule %r: %s: %s", schedule.name, type(err).__name__, err)
        return recorded

    def _fire_due(self, schedule: e.Schedule, now: dt.datetime) -> list[e.ScheduleFiring]:
        last = self.platform.store.last_slot(schedule.id)
        since = max(schedule.active_since, last) if last is not None else schedule.active_since
        due = slots(schedule.cron, schedule.timezone, since, now)
        if schedule.catch_up == "all":
            plan = [(slot, 0, "fire") for slot in itertools.islice(due, self.max_per_tick)]
        else:
            due = list(due)
            if not due:
                return []
            if schedule.catch_up == "latest":
                plan = [(due[-1], len(due) - 1, "fire")]
            else:  # skip
                late = [slot for slot in due if now - slot > self.grace]
                plan = [(late[-1], len(late) - 1, "skip")] if late else []
                plan += [(slot, 0, "fire") for slot in due[len(late):]]
        recorded = []
        for slot, missed, action in plan:
            if action == "skip":
                firing_id = self.platform.store.claim_firing(schedule.id, slot, outcome="skipped", missed=missed)
                if firing_id is not None:
                    log.info("schedule %r: skipped %d missed slot(s) up to %s", schedule.name, missed + 1, slot)
                    recorded.append(self.platform.store.finish_firing(firing_id, "skipped"))
                continue
            firing = fire(self.platform, schedule, slot, submit_fn=self.submit_fn, missed=missed)
            if firing is not None:
                recorded.append(firing)
        return recorded

    def run(self, stop: threading.Event, interval: float = 10.0) -> None:
        """Tick every `interval` seconds until `stop` is set (the CLI sets it on SIGTERM / SIGINT)."""
        while not stop.is_set():
            self.tick()
            stop.wait(interval)

