"""`alloyml ui`: start the Streamlit dashboard on 127.0.0.1.

Streamlit runs as a child in its own process group. SIGTERM or Ctrl-C on `alloyml ui` stops that whole
group: SIGTERM first, SIGKILL after `STOP_GRACE_S` for a child that ignores it, so no dashboard is left
running behind a stopped command.
"""

from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"
STOP_GRACE_S = 3.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    ui = subparsers.add_parser("ui", help="start the dashboard (Streamlit) on 127.0.0.1")
    ui.add_argument("--port", type=int, default=8501)
    ui.add_argument("--address", default="127.0.0.1",
                    help="bind address (default 127.0.0.1; the dashboard has no authentication)")
    ui.add_argument("--benchmarks", metavar="DIR",
                    help="folder of benchmark results to show (default: benchmarks/results of a source checkout)")
    ui.set_defaults(func=_serve)


def _serve(args) -> int:
    import signal
    import subprocess
    import sys

    from alloyml.errors import NotFoundError

    if not APP.is_file():
        raise NotFoundError(f"the dashboard app {APP} is not installed")
    if args.address not in LOOPBACK:
        print(f"warning: the dashboard has no authentication; binding {args.address} lets anyone who can "
              "reach this machine read the store", file=sys.stderr)
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", args.address,
               "--server.port", str(args.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    if args.benchmarks:  # after `--`, the arguments go to the app (alloyml.ui.queries.benchmark_results_dir)
        command += ["--", "--benchmarks", str(Path(args.benchmarks).resolve())]
    child = subprocess.Popen(command, start_new_session=True)
    print(f"dashboard at http://{args.address}:{args.port} (pid {child.pid})", flush=True)

    def stop(signum, _frame):
        stop_process_group(child, STOP_GRACE_S)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            stop_process_group(child, STOP_GRACE_S)


def stop_process_group(child, grace_s: float) -> None:
    """SIGTERM the child's process group, then SIGKILL it if still alive after `grace_s`."""
    import os
    import signal
    import subprocess

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
