"""`alloyml schedule add | list | pause | resume | remove | run-now` and `alloyml scheduler`."""


def register(subparsers) -> None:
    schedule = subparsers.add_parser("schedule", help="run built-in workflows on a cron timetable")
    sub = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="add a schedule")
    add.add_argument("name")
    add.add_argument("--workflow", required=True, help="built-in workflow (see `alloyml workflow builtins`)")
    add.add_argument("--cron", required=True, help="five-field cron expression, e.g. '0 3 * * *'")
    add.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                     help="an input: a JSON value (bare text such as a name is a string), or @path to a "
                          ".npy file (repeat per input)")
    add.add_argument("--timezone", default="UTC", help="IANA zone of the cron's wall clock (default UTC)")
    add.add_argument("--catch-up", default="latest", choices=("skip", "latest", "all"),
                     help="after downtime: skip missed slots, fire the latest once, or fire all (default latest)")
    add.set_defaults(func=_add)

    listing = sub.add_parser("list", help="schedules with their next and last firings")
    listing.set_defaults(func=_list)

    for action, text in (("pause", "stop firing a schedule"), ("resume", "fire a paused schedule again, from now"),
                         ("remove", "delete a schedule and its firing history"),
                         ("run-now", "fire a schedule once, now")):
        parser = sub.add_parser(action, help=text)
        parser.add_argument("name")
        parser.set_defaults(func=_action, action=action)

    scheduler = subparsers.add_parser("scheduler", help="run the scheduler process (fires due schedules)")
    scheduler.add_argument("--interval", type=float, default=10.0, help="seconds between ticks (default 10)")
    scheduler.add_argument("--grace", type=float, default=60.0,
                           help="seconds a slot may be late and still fire under --catch-up skip (default 60)")
    scheduler.set_defaults(func=_scheduler)


def _add(args) -> int:
    from alloyml.commands.workflow import _parse_input
    from alloyml.platform.client import Platform
    from alloyml.workflows.schedules import add_schedule, next_firing

    inputs = dict(_parse_input(item) for item in args.input)
    with Platform() as platform:
        schedule = add_schedule(platform, args.name, args.workflow, args.cron, inputs=inputs,
                                timezone=args.timezone, catch_up=args.catch_up)
    print(f"schedule {schedule.name!r} added; next firing {next_firing(schedule):%Y-%m-%d %H:%M} UTC")
    return 0


def _list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from alloyml.platform.client import Platform
    from alloyml.workflows.schedules import next_firing

    table = Table(title="schedules (times in UTC)")
    for column in ("name", "workflow", "cron", "timezone", "catch-up", "state", "next", "last", "outcome"):
        table.add_column(column)
    with Platform() as platform:
        for schedule in platform.store.list_schedules():
            last = platform.store.list_firings(schedule.id, limit=1)
            upcoming = next_firing(schedule)
            outcome = "" if not last else last[0].outcome + (
                f" (workflow {last[0].workflow_id}: {last[0].workflow_status})" if last[0].workflow_id else "")
            table.add_row(schedule.name, schedule.workflow, schedule.cron, schedule.timezone, schedule.catch_up,
                          "paused" if schedule.paused else "active",
                          f"{upcoming:%Y-%m-%d %H:%M}" if upcoming else "-",
                          f"{last[0].slot:%Y-%m-%d %H:%M}" if last else "-", outcome)
    Console().print(table)
    return 0


def _action(args) -> int:
    from alloyml.platform.client import Platform
    from alloyml.workflows import schedules

    with Platform() as platform:
        if args.action == "run-now":
            firing = schedules.run_now(platform, args.name)
            if firing.outcome != "submitted":
                print(f"schedule {args.name!r}: submission failed: {firing.error}")
                return 1
            print(f"schedule {args.name!r}: workflow {firing.workflow_id} submitted")
            return 0
        {"pause": schedules.pause_schedule, "resume": schedules.resume_schedule,
         "remove": schedules.remove_schedule}[args.action](platform, args.name)
    print(f"schedule {args.name!r}: {args.action}d" if args.action != "remove" else f"schedule {args.name!r} removed")
    return 0


def _scheduler(args) -> int:
    import datetime as dt
    import logging
    import signal
    import threading

    from alloyml.errors import InvalidInputError
    from alloyml.platform.client import Platform
    from alloyml.workflows.scheduler import Scheduler

    if not args.interval > 0 or not args.grace >= 0:  # also refuses NaN
        raise InvalidInputError(f"--interval must be > 0 and --grace >= 0 seconds; got {args.interval}, {args.grace}")
    handler = logging.StreamHandler()  # the scheduler's own lines only, not every library's INFO chatter
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("alloyml.scheduler")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())  # finish the current tick, then exit 0
    with Platform() as platform:
        print(f"scheduler running (tick every {args.interval:g} s); SIGTERM or Ctrl-C stops it", flush=True)
        Scheduler(platform, grace=dt.timedelta(seconds=args.grace)).run(stop, interval=args.interval)
    print("scheduler stopped", flush=True)
    return 0
