"""`alloyml ui`: start the Streamlit dashboard on 127.0.0.1."""

from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"


def register(subparsers) -> None:
    ui = subparsers.add_parser("ui", help="start the dashboard (Streamlit) on 127.0.0.1")
    ui.add_argument("--port", type=int, default=8501)
    ui.add_argument("--address", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--benchmarks", metavar="DIR",
                    help="folder of benchmark results to show (default: benchmarks/results of a source checkout)")
    ui.set_defaults(func=_serve)


def _serve(args) -> int:
    import subprocess
    import sys

    from alloyml.errors import NotFoundError

    if not APP.is_file():
        raise NotFoundError(f"the dashboard app {APP} is not installed")
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", args.address,
               "--server.port", str(args.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    if args.benchmarks:  # after `--`, the arguments go to the app (alloyml.ui.queries.benchmark_results_dir)
        command += ["--", "--benchmarks", str(Path(args.benchmarks).resolve())]
    print(f"dashboard at http://{args.address}:{args.port}")
    return subprocess.call(command)
