"""`alloyml serve cascade NAME`: serve a stored cascade on Ray Serve, log its requests to the store, and
roll over to each new version saved under NAME while it runs."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="deploy stored models as services")
    sub = parser.add_subparsers(dest="serve_command", metavar="WHAT", required=True)
    cascade = sub.add_parser("cascade", help="serve a stored cascade (HTTP JSON on 127.0.0.1 and a Ray handle)")
    cascade.add_argument("name", help="cascade name in the store")
    cascade.add_argument("--version", type=int, default=None, help="version to serve first (default: latest)")
    cascade.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1 (default 8000)")
    cascade.add_argument("--budget", type=float, default=None,
                         help="budget guard: max mean cost per request (default: the stored budget)")
    cascade.add_argument("--no-guard", action="store_true", help="serve the chosen point only")
    cascade.add_argument("--window-s", type=float, default=60.0, help="budget guard window (default 60 s)")
    cascade.add_argument("--min-requests", type=int, default=20, help="requests before the guard moves")
    cascade.add_argument("--poll-s", type=float, default=5.0, help="how often to look for a new version")
    cascade.add_argument("--duration", type=float, default=None,
                         help="stop this many seconds after the first version is up")
    cascade.add_argument("--replicas", type=int, default=None,
                         help="Serve replicas of the ingress and of each stage (default: the plan's, else 1); "
                              "with --max-replicas, the fewest the autoscaler keeps")
    cascade.add_argument("--max-replicas", type=int, default=None,
                         help="autoscale between --replicas and this many replicas by requests in flight")
    cascade.add_argument("--target-ongoing-requests", type=float, default=None,
                         help="autoscaling aim: requests in flight per replica (default 32)")
    cascade.set_defaults(func=_serve_cascade)


def replica_settings(args: argparse.Namespace):
    """The ReplicaPlan the flags ask for, None when none is given (then the plan's settings apply); bad
    values are refused before anything starts."""
    from pydantic import ValidationError

    from alloyml.errors import InvalidInputError
    from alloyml.routing.plan import ReplicaPlan

    given = {"num_replicas": args.replicas, "max_replicas": args.max_replicas,
             "target_ongoing_requests": args.target_ongoing_requests}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    try:
        return ReplicaPlan(**given)
    except ValidationError as err:
        flags = {"num_replicas": "--replicas", "max_replicas": "--max-replicas",
                 "target_ongoing_requests": "--target-ongoing-requests"}
        problems = "; ".join(f"{flags.get(str(e['loc'][0]), 'replicas') if e['loc'] else 'replicas'}: {e['msg']}"
                             for e in err.errors())
        raise InvalidInputError(f"replica settings: {problems}") from None


def _serve_cascade(args: argparse.Namespace) -> int:
    import sys
    import threading
    import time

    import ray
    from rich.console import Console

    from alloyml.platform.client import Platform
    from alloyml.routing.plan import CascadePlan
    from alloyml.routing.serve import CascadeService, DeployError
    from alloyml.workflows.recording import StoreRequestLog

    replicas = replica_settings(args)  # before Ray starts
    console = Console()
    stop = _stop_on_signals(threading.Event())
    started_ray = not ray.is_initialized()  # then this command owns Ray and shuts it down at the end
    platform = Platform()
    stored = platform.store.get_cascade(args.name, args.version)
    budget = None if args.no_guard else (args.budget or stored.budget)
    current, service, started, failed = None, None, None, set()
    try:
        while not stop.is_set():
            if current is None or (args.version is None and stored.version not in (current.version, *failed)):
                log = StoreRequestLog(stored.id, str(platform.settings.db_url), str(platform.settings.home))
                if service is None:
                    service = CascadeService(args.name, budget=budget, window_s=args.window_s,
                                             min_requests=args.min_requests, log_callback=log, port=args.port,
                                             replicas=replicas)
                previous = service.log_callback
                service.log_callback = log  # requests are logged against the version that served them
                try:
                    service.deploy(CascadePlan.from_dict(stored.plan), stored.version)
                except DeployError as err:
                    if current is None:
                        raise  # nothing was serving: the command fails
                    service.log_callback = previous
                    failed.add(stored.version)
                    print(f"alloyml: error: {err}", file=sys.stderr)  # and the old version goes on serving
                else:
                    _stop_on_signals(stop)  # again: starting Ray installed its own SIGTERM handler (abort)
                    current = stored
                    started = started or time.monotonic()
                    console.print(f"serving cascade {args.name!r} version {stored.version} at {service.url} "
                                  f"(status: GET {service.url}/status)")
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            _stop_on_signals(stop)  # Ray may have put its handler back (a first handle call starts its router)
            stop.wait(args.poll_s if args.duration is None else min(args.poll_s, args.duration))
            stored = platform.store.get_cascade(args.name) if args.version is None else stored
    finally:
        if service is not None:
            service.delete()  # Serve lets each replica finish its in-flight requests first
        platform.close()
        if started_ray:
            ray.shutdown()  # stops the local Ray this command started: no agent outlives it
    if stop.is_set():
        console.print(f"stopped serving cascade {args.name!r}")
    return 0


def _stop_on_signals(stop):
    """SIGTERM and SIGINT set `stop`, so the serving loop ends, drains and exits 0 (only the main thread
    can install handlers; elsewhere, e.g. under a test's thread, the caller's handlers stay)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop
