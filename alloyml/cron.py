"""Cron timetables on a time zone's wall clock: which UTC instants a schedule's slots fall on. A base
module (it imports only `errors`) because the scheduler fires by it and the dashboard shows next firings.

croniter parses the expression and walks matching wall-clock times (naive, so it applies no DST rules of
its own); zoneinfo maps each wall time to UTC. The two DST edge cases follow classic cron:

- a wall time that does not exist (spring forward: 02:30 on 2026-03-29 in Europe/Berlin) fires once, at
  the first instant after the gap (03:00 CEST): a daily job is not lost, and several matches inside the
  gap fire once;
- a wall time that happens twice (fall back: 02:30 on 2026-10-25) fires once, at its first occurrence.

Slots are naive UTC datetimes, as every timestamp in the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from alloyml.errors import InvalidInputError

# DST and zone shifts are at most a few hours: walking the wall clock from this far before `after` finds
# every slot after it.
_MARGIN = dt.timedelta(hours=26)


def check_cron(cron: str) -> str:
    """`cron` if it is a five-field cron expression (or an @hourly/@daily/... alias); else InvalidInputError."""
    if not isinstance(cron, str) or not cron.strip():
        raise InvalidInputError(f"cron {cron!r} must be a cron expression such as '0 3 * * *'")
    cron = " ".join(cron.split())
    fields = cron.split(" ")
    if not (len(fields) == 5 or (len(fields) == 1 and cron.startswith("@"))):
        raise InvalidInputError(f"cron {cron!r} has {len(fields)} fields; expected 5 (minute hour day-of-month "
                                "month day-of-week), e.g. '0 3 * * *'")
    try:
        croniter(cron, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except (CroniterError, ValueError, KeyError) as err:
        raise InvalidInputError(f"cron {cron!r} is not a valid cron expression ({err}); e.g. '0 3 * * *'") from err
    return cron


def check_timezone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"timezone {name!r} must be an IANA name such as 'UTC' or 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise InvalidInputError(f"timezone {name!r} is not a known IANA time zone; e.g. 'UTC', "
                                "'Europe/Berlin', 'America/New_York'") from err


def to_utc(wall: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The naive UTC instant of naive wall time `wall` in `zone`, by the rules in the module docstring."""
    first = wall.replace(tzinfo=zone, fold=0)
    utc = first.astimezone(dt.UTC)
    if utc.astimezone(zone).replace(tzinfo=None) != wall:  # in a gap: fold=0 read it with the old offset
        utc = _gap_end(utc, zone)
    return utc.replace(tzinfo=None)


def _gap_end(utc: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    """The transition that opened the gap `utc` (read with the pre-gap offset) lies in: its UTC instant.
    Found by bisection on the UTC offset within the gap's width (at most a day)."""
    low, high = utc - dt.timedelta(days=1), utc
    offset_before = low.astimezone(zone).utcoffset()
    while high - low > dt.timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset_before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def slots(cron: str, timezone: str, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
    """The slots (naive UTC) with after < slot <= until, in increasing order, each once."""
    zone = check_timezone(timezone)
    start_wall = (after.replace(tzinfo=dt.UTC) - _MARGIN).astimezone(zone).replace(tzinfo=None)
    walk = croniter(check_cron(cron), start_wall)
    previous = None
    while True:
        slot = to_utc(walk.get_next(dt.datetime), zone)
        if slot > until:
            return
        if slot > after and slot != previous:  # several gap times map to one instant
            yield slot
        previous = slot


def next_slot(cron: str, timezone: str, after: dt.datetime) -> dt.datetime:
    """The first slot after `after` (naive UTC); within the next ~5 years for any valid expression."""
    for slot in slots(cron, timezone, after, after + dt.timedelta(days=5 * 366)):
        return slot
    raise InvalidInputError(f"cron {cron!r} has no slot in the next 5 years")
