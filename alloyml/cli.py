"""The `alloyml` command.

Each command group lives in `alloyml/commands/<group>.py` with a `register(subparsers)` function that
only builds argparse parsers; the work (and every heavy import: torch, ray, mergekit) happens inside the
handler, so `alloyml --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
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
        return int(args.func(args) or 0)
    except AlloyError as err:
        print(f"alloyml: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alloyml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
