"""The ``kinfer`` command line: local stack, database, keys, batch and benchmarks.

Each sub-command group lives in its own module of this package with a
``register(subparsers)`` function that adds its parsers and sets ``func``
(a callable taking the parsed args and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``kinfer --help`` lists them.
COMMAND_MODULES = ("stack", "serve", "db", "keys", "models", "batch", "agent", "deploy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kinfer", description="Kinfer: serverless inference on Knative and Triton.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"shared.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"shared.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
