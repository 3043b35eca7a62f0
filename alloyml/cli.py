"""The `alloyml` command.

Each command group lives in `alloyml/commands/<group>.py` with a `register(subparsers)` function that
only builds argparse parsers; the work (and every heavy import: torch, ray, mergekit) happens inside the
handler, so `alloyml --help` stays fast.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys

from alloyml.errors import AlloyError

# Command groups, in the order `--help` lists them.
COMMAND_MODULES = (
    "alloyml.commands.db",
    "alloyml.commands.runs",
    "alloyml.commands.workflow",
    "alloyml.commands.schedule",
    "alloyml.commands.demo",
    "alloyml.commands.ui",
    "alloyml.commands.cascade",
    "alloyml.commands.serve",
    "alloyml.commands.merge",
    "alloyml.commands.tune",
    "alloyml.commands.train",
    "alloyml.commands.models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alloyml",
        description="Data valuation and model composition, every step recorded in one store.",
    )
    parser.add_argument("--version", action="version", version=f"alloyml {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _version() -> str:
    from alloyml import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = int(args.func(args) or 0)
    except AlloyError as err:
        print(f"alloyml: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alloyml: interrupted", file=sys.stderr)
        return 130
    if code == 0 and argv is None and getattr(args, "exit_without_teardown", False):
        _exit_without_teardown()
    return code


def _exit_without_teardown() -> None:
    """End the process as an orderly exit would (atexit handlers, flushed output), minus the interpreter's
    teardown: freeing every module and object of torch's import graph takes ~0.8 s, a third of a
    two-second merge, and frees nothing the OS does not reclaim anyway. Only for commands that opt in
    (`exit_without_teardown`), which have closed, flushed and synced everything they wrote by the time
    they return, and only when run as the program (`main()` from Python returns as usual)."""
    atexit._run_exitfuncs()  # what a normal exit runs first (logging's flush, libraries' hooks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
