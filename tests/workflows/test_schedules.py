"""Schedules with a controllable clock: cron slots across DST changes (against a brute-force minute scan),
catch-up policies after an outage, two schedulers firing each slot once, pause/resume, run-now, the CLI's
errors and SIGTERM, and one firing through the real submit path."""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from alloyml.cron import next_slot, slots
from alloyml.errors import InvalidInputError, NotFoundError
from alloyml.platform.client import Platform
from alloyml.workflows import schedules
from alloyml.workflows.scheduler import Scheduler

UTC = dt.UTC
H = dt.timedelta(hours=1)


# -- cron slots ---------------------------------------------------------------------------------------------
def _brute_force(matches, zone: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Slots by the documented rule, from a scan of every minute: a wall time `w` that the cron matches
    fires at the first UTC minute whose local time is >= w (a gap time fires when the gap ends; a repeated
    time at its first occurrence)."""
    tz = ZoneInfo(zone)
    minutes = [start + dt.timedelta(minutes=i) for i in range(int((end - start).total_seconds() // 60) + 1)]
    local = [m.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None) for m in minutes]
    wall = local[0].replace(second=0, microsecond=0)
    walls = []
    last = max(local)
    while wall <= last:
        if matches(wall):
            walls.append(wall)
        wall += dt.timedelta(minutes=1)
    # The first minute whose local time is >= w is the first where the running maximum of local time is:
    # a monotone sequence, so bisect it.
    running = list(itertools.accumulate(local, max))
    fired = set()
    for w in walls:
        i = bisect.bisect_left(running, w)
        if i < len(minutes) and minutes[i] > start:
            fired.add(minutes[i])
    return sorted(fired)


@pytest.mark.parametrize(("zone", "change"), [  # four days around each 2026 change of both zones
    ("Europe/Berlin", dt.datetime(2026, 3, 27)), ("Europe/Berlin", dt.datetime(2026, 10, 23)),
    ("America/New_York", dt.datetime(2026, 3, 6)), ("America/New_York", dt.datetime(2026, 10, 30))])
@pytest.mark.parametrize(("cron", "matches"), [
    ("30 2 * * *", lambda w: w.hour == 2 and w.minute == 30),
    ("0 * * * *", lambda w: w.minute == 0),
    ("*/20 1-3 * * *", lambda w: w.minute % 20 == 0 and 1 <= w.hour <= 3),
])
def test_slots_across_dst_changes_match_a_minute_scan(zone, cron, matches, change):
    start, end = change, change + dt.timedelta(days=4)
    expected = _brute_force(matches, zone, start, end - H * 3)
    assert list(slots(cron, zone, start, end - H * 3)) == expected
    assert expected  # the scan found slots at all


def test_berlin_daily_slot_on_the_two_change_days():
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC), so 02:30 does not exist: it fires at 01:00 UTC.
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC), so 02:30 happens twice: first one only.
    spring = list(slots("30 2 * * *", "Europe/Berlin", dt.datetime(2026, 3, 27, 12), dt.datetime(2026, 3, 30, 12)))
    assert spring == [dt.datetime(2026, 3, 28, 1, 30), dt.datetime(2026, 3, 29, 1, 0), dt.datetime(2026, 3, 30, 0, 30)]
    autumn = list(slots("30 2 * * *", "Europe/Berlin", dt.datetime(2026, 10, 24, 12), dt.datetime(2026, 10, 26, 12)))
    assert autumn == [dt.datetime(2026, 10, 25, 0, 30), dt.datetime(2026, 10, 26, 1, 30)]
    assert next_slot("0 3 * * *", "UTC", dt.datetime(2026, 1, 1, 3)) == dt.datetime(2026, 1, 2, 3)


# -- the scheduler with a controllable clock ------------------------------------------------------------------
class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class StubSubmit:
    """Records each submission and makes a real workflow row for it (so the firing's link is checked)."""

    def __init__(self, clock=None):
        self.calls: list[tuple[str, dt.datetime | None]] = []
        self.lock = threading.Lock()
        self.clock = clock

    def __call__(self, platform, schedule) -> int:
        workflow = platform.store.create_workflow(schedule.workflow, {}, {"steps": []}, [])
        with self.lock:
            self.calls.append((schedule.name, self.clock() if self.clock else None))
        return workflow.id


T0 = dt.datetime(2026, 3, 28, 20, 0)  # a Saturday evening before Berlin's spring change


def _add(platform, name="hourly", cron="0 * * * *", catch_up="latest", timezone="UTC", now=T0):
    return schedules.add_schedule(platform, name, "demo", cron, timezone=timezone, catch_up=catch_up,
                                  inputs={"config": "quick"}, now=now)


def _firings(platform, name):
    schedule = platform.store.get_schedule(name)
    return sorted(platform.store.list_firings(schedule.id, limit=10_000), key=lambda f: f.slot)


@pytest.mark.parametrize("start", [dt.datetime(2026, 3, 27, 12), dt.datetime(2026, 10, 23, 12)])
def test_scheduler_fires_a_berlin_daily_schedule_at_the_right_utc_instants(platform, start):
    _add(platform, "daily", "30 2 * * *", timezone="Europe/Berlin", now=start)
    clock, submit = Clock(start), StubSubmit()
    scheduler = Scheduler(platform, clock=clock, submit_fn=submit)
    fired_at = []
    while clock.now < start + dt.timedelta(days=4):
        clock.now += dt.timedelta(minutes=10)  # a tick every 10 minutes, through the DST change
        fired_at += [(f.slot, clock.now) for f in scheduler.tick()]
    expected = _brute_force(lambda w: w.hour == 2 and w.minute == 30, "Europe/Berlin", start, clock.now)
    assert [slot for slot, _ in fired_at] == expected
    assert len(expected) == 4  # one per day, the change day included
    assert all(dt.timedelta(0) <= now - slot < dt.timedelta(minutes=10) for slot, now in fired_at)
    assert len(submit.calls) == len(expected)


# Outage: the scheduler fires slot t1, is down for five hours, and comes back 10 s after slot t6.
T1 = T0 + H


@pytest.mark.parametrize(("policy", "expected"), [
    # (slot offset in hours from T1, outcome, missed)
    ("all", [(0, "submitted", 0), (1, "submitted", 0), (2, "submitted", 0), (3, "submitted", 0),
             (4, "submitted", 0), (5, "submitted", 0)]),
    ("latest", [(0, "submitted", 0), (5, "submitted", 4)]),
    ("skip", [(0, "submitted", 0), (4, "skipped", 3), (5, "submitted", 0)]),
])
def test_catch_up_policy_after_an_outage(platform, policy, expected):
    _add(platform, catch_up=policy)
    clock, submit = Clock(T1 + dt.timedelta(seconds=5)), StubSubmit()
    scheduler = Scheduler(platform, clock=clock, submit_fn=submit, grace=dt.timedelta(seconds=60))
    assert [f.slot for f in scheduler.tick()] == [T1]
    clock.now = T1 + 5 * H + dt.timedelta(seconds=10)  # back after the outage
    scheduler.tick()
    assert scheduler.tick() == []  # nothing twice
    got = [((f.slot - T1) / H, f.outcome, f.missed) for f in _firings(platform, "hourly")]
    assert got == [(float(h), outcome, missed) for h, outcome, missed in expected]
    assert len(submit.calls) == sum(outcome == "submitted" for _, outcome, _ in expected)
    for firing in _firings(platform, "hourly"):
        assert (firing.workflow_id is not None) == (firing.outcome == "submitted")
        if firing.workflow_id:
            assert firing.workflow_status == "pending"  # the linked workflow row, as the stub made it


def test_skip_records_but_does_not_fire_when_every_missed_slot_is_late(sqlite_platform):
    _add(sqlite_platform, catch_up="skip")
    clock = Clock(T1 + 3 * H + dt.timedelta(minutes=30))
    submit = StubSubmit()
    Scheduler(sqlite_platform, clock=clock, submit_fn=submit).tick()
    assert [(f.slot, f.outcome, f.missed) for f in _firings(sqlite_platform, "hourly")] == [
        (T1 + 3 * H, "skipped", 3)]
    assert submit.calls == []
    clock.now = T1 + 4 * H + dt.timedelta(seconds=1)  # on time again: fires
    assert [(f.slot, f.outcome) for f in Scheduler(sqlite_platform, clock=clock, submit_fn=submit).tick()] == [
        (T1 + 4 * H, "submitted")]


def test_all_fires_a_long_backlog_oldest_first_a_bounded_batch_per_tick(sqlite_platform):
    _add(sqlite_platform, cron="*/5 * * * *", catch_up="all")
    clock = Clock(T0 + 10 * H)  # 120 slots due
    scheduler = Scheduler(sqlite_platform, clock=clock, submit_fn=StubSubmit(), max_per_tick=50)
    batches = [len(scheduler.tick()) for _ in range(4)]
    assert batches == [50, 50, 20, 0]
    slots_fired = [f.slot for f in _firings(sqlite_platform, "hourly")]
    assert slots_fired == [T0 + dt.timedelta(minutes=5 * i) for i in range(1, 121)]


def test_two_schedulers_on_one_database_fire_each_slot_once(platform, tmp_path):
    _add(platform, cron="*/5 * * * *", catch_up="all")
    ticks = [T0 + dt.timedelta(minutes=5 * i, seconds=1) for i in range(1, 41)]  # 40 slots
    barrier = threading.Barrier(2)
    submit = StubSubmit()
    errors = []

    def scheduler_thread():
        try:
            with Platform(db_url=platform.settings.db_url, home=platform.settings.home) as own:
                clock = Clock(T0)
                scheduler = Scheduler(own, clock=clock, submit_fn=submit)
                for now in ticks:
                    clock.now = now
                    barrier.wait(timeout=60)  # both tick at the same instant, racing for the same slot
                    scheduler.tick()
        except BaseException as err:  # surfaced below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=scheduler_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    expected = [T0 + dt.timedelta(minutes=5 * i) for i in range(1, 41)]
    assert [f.slot for f in _firings(platform, "hourly")] == expected
    assert len(submit.calls) == len(expected)  # each slot submitted by exactly one of the two
    assert len(platform.store.list_workflows(limit=1000)) == len(expected)


def test_pause_stops_firing_and_resume_does_not_catch_up_the_pause(platform):
    _add(platform, catch_up="all")
    clock, submit = Clock(T1 + dt.timedelta(seconds=1)), StubSubmit()
    scheduler = Scheduler(platform, clock=clock, submit_fn=submit)
    scheduler.tick()
    schedules.pause_schedule(platform, "hourly")
    assert platform.store.get_schedule("hourly").paused
    assert schedules.next_firing(platform.store.get_schedule("hourly"), clock.now) is None
    clock.now = T1 + 3 * H + dt.timedelta(seconds=1)
    assert scheduler.tick() == []
    schedules.resume_schedule(platform, "hourly", now=T1 + 3 * H + dt.timedelta(minutes=30))
    clock.now = T1 + 4 * H + dt.timedelta(seconds=1)
    scheduler.tick()
    assert [f.slot for f in _firings(platform, "hourly")] == [T1, T1 + 4 * H]  # +1h..+3h fell in the pause
    assert schedules.next_firing(platform.store.get_schedule("hourly"), clock.now) == T1 + 5 * H


def test_run_now_fires_once_outside_the_timetable(platform):
    _add(platform)
    submit = StubSubmit()
    firing = schedules.run_now(platform, "hourly", submit_fn=submit, now=T1)  # exactly on a timetable slot
    assert firing.manual and firing.outcome == "submitted" and firing.slot != T1
    fired = Scheduler(platform, clock=Clock(T1 + dt.timedelta(seconds=2)), submit_fn=submit).tick()
    assert [f.slot for f in fired] == [T1]  # the manual firing took nothing from the timetable
    assert len(submit.calls) == 2


def test_a_failing_submission_is_recorded_and_the_scheduler_goes_on(sqlite_platform):
    _add(sqlite_platform, "broken")
    _add(sqlite_platform, "fine")

    def submit(platform, schedule):
        if schedule.name == "broken":
            raise RuntimeError("cluster unreachable")
        return StubSubmit()(platform, schedule)

    fired = Scheduler(sqlite_platform, clock=Clock(T1 + dt.timedelta(seconds=1)), submit_fn=submit).tick()
    assert {(f.schedule_id, f.outcome) for f in fired} == {
        (sqlite_platform.store.get_schedule("broken").id, "failed"),
        (sqlite_platform.store.get_schedule("fine").id, "submitted")}
    [broken] = _firings(sqlite_platform, "broken")
    assert "cluster unreachable" in broken.error and broken.workflow_id is None


def test_bad_schedules_are_refused_before_anything_is_stored(sqlite_platform):
    cases = [
        (dict(cron="61 * * * *"), "not a valid cron"),
        (dict(cron="0 3 * *"), "has 4 fields"),
        (dict(cron="0 3 * * * *"), "has 6 fields"),
        (dict(timezone="Mars/Olympus"), "not a known IANA time zone"),
        (dict(catch_up="some"), "catch-up policy"),
        (dict(inputs={}), "missing \\['config'\\]"),
        (dict(inputs={"config": "quick", "extra": 1}), "unexpected \\['extra'\\]"),
    ]
    for change, message in cases:
        arguments = dict(cron="0 3 * * *", timezone="UTC", catch_up="latest", inputs={"config": "quick"}) | change
        with pytest.raises(InvalidInputError, match=message):
            schedules.add_schedule(sqlite_platform, "s", "demo", **arguments)
    with pytest.raises(NotFoundError, match="no built-in workflow named 'nope'"):
        schedules.add_schedule(sqlite_platform, "s", "nope", "0 3 * * *")
    assert sqlite_platform.store.list_schedules() == []
    _add(sqlite_platform, "s")
    with pytest.raises(InvalidInputError, match="already exists"):
        _add(sqlite_platform, "s")
    schedules.remove_schedule(sqlite_platform, "s")
    with pytest.raises(NotFoundError, match="no schedule named 's'"):
        schedules.pause_schedule(sqlite_platform, "s")


def test_the_store_location_input_is_stored_as_a_reference(sqlite_platform):
    _add(sqlite_platform, "v")  # `demo` takes a `store` input; it defaults to this store's location
    stored = sqlite_platform.store.get_schedule("v").inputs
    assert stored == {"config": "quick", "store": {"__store__": "workflow"}}
    assert sqlite_platform.settings.db_url not in repr(stored)


# -- the command line ---------------------------------------------------------------------------------------------
@pytest.fixture
def cli_env(tmp_path):
    return dict(os.environ, ALLOYML_HOME=str(tmp_path / "home"), PYTHONPATH=str(Path(__file__).resolve().parents[2]))


def test_cli_errors_are_one_line_without_a_traceback(alloy_home, capsys):
    from alloyml.cli import main

    add = ["schedule", "add", "s", "--input", 'config="quick"']
    for argv, message in [
        ([*add, "--workflow", "demo", "--cron", "0 25 * * *"], "not a valid cron"),
        ([*add, "--workflow", "nope", "--cron", "0 3 * * *"], "no built-in workflow named 'nope'"),
        ([*add, "--workflow", "demo", "--cron", "0 3 * * *", "--timezone", "Nowhere/City"], "time zone"),
        (["schedule", "pause", "missing"], "no schedule named 'missing'"),
        (["scheduler", "--interval", "0"], "--interval must be > 0"),
    ]:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith("alloyml: error:") and message in captured.err, captured.err
        assert "Traceback" not in captured.err + captured.out
    assert main([*add, "--workflow", "demo", "--cron", "0 3 * * *", "--timezone", "Europe/Berlin"]) == 0
    assert "schedule 's' added" in capsys.readouterr().out
    assert main(["schedule", "pause", "s"]) == 0
    assert main(["schedule", "list"]) == 0
    assert "paused" in capsys.readouterr().out


def test_scheduler_process_exits_cleanly_on_sigterm(cli_env):
    process = subprocess.Popen([sys.executable, "-m", "alloyml.cli", "scheduler", "--interval", "0.2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env,
                               cwd=Path(__file__).resolve().parents[2])
    try:
        assert "scheduler running" in process.stdout.readline()  # printed once the store is open
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "scheduler stopped" in output and "Traceback" not in output


# -- the real submit path -------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_a_firing_runs_the_real_builtin_workflow(sqlite_platform, ray_session):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from alloyml.workflows import WorkflowHandle

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    x_test = rng.normal(size=(40, 3))
    y_test = (x_test[:, 0] + 0.5 * x_test[:, 1] > 0).astype(np.int64)
    schedules.add_schedule(sqlite_platform, "train", "sklearn-train-score", "0 * * * *", now=T0,
                           inputs={"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test})
    submit = functools.partial(schedules.submit_scheduled, detach=False)
    [firing] = Scheduler(sqlite_platform, clock=Clock(T1 + dt.timedelta(seconds=3)), submit_fn=submit).tick()
    assert firing.outcome == "submitted"
    result = WorkflowHandle(sqlite_platform, firing.workflow_id).result(timeout=180)
    reference = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))]).fit(x, y)
    assert result["accuracy"] == pytest.approx(reference.score(x_test, y_test))
    assert _firings(sqlite_platform, "train")[0].workflow_status == "done"
