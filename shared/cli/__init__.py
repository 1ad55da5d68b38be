"""The ``kinfer`` command line: local stack, database, keys, batch, inference and contexts.

Each sub-command group lives in its own module of this package with a
``register(subparsers)`` function that adds its parsers and sets ``func``
(a callable taking the parsed args and returning an exit code). Commands that
call the HTTP API connect through ``shared.cli.api`` (flags, KINFER_URL /
KINFER_API_KEY, config file contexts). Every failure, argparse's usage errors
included, is printed as ``shared.cli.errors`` describes (``error: <code>: <message>``,
then a hint) with its exit code; KINFER_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from shared.cli.errors import EXIT_CODES, EXIT_USAGE, ApiError, CliError, UsageError, name_model

# Sub-command modules, in the order ``kinfer --help`` lists them.
COMMAND_MODULES = (
    "stack",
    "serve",
    "db",
    "config",
    "infer",
    "requests",
    "models",
    "batch",
    "capture",
    "keys",
    "usage",
    "audit",
    "agent",
    "deploy",
    "logs",
    "completion",
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("kinfer")
    except PackageNotFoundError:
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors printed as every other failure (exit 2); sub-command parsers
    are of this class too (argparse builds them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        error = UsageError(message, hint=f"`{self.prog} --help` shows the arguments")
        sys.stderr.write("".join(f"{line}\n" for line in error.lines()))
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kinfer",
        description="Kinfer: serverless inference on Knative and Triton.",
        epilog="API commands take --url/--key/--context (or KINFER_URL, KINFER_API_KEY, `kinfer config`). "
        f"Every command that prints data takes -o table|json|yaml. E{EXIT_CODES[1:]}.",
    )
    parser.add_argument("--version", action="version", version=f"kinfer {version()}")
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
    args = parser.parse_args(argv)  # usage errors exit 2 here (argparse)
    # Library warnings stay off the terminal: failures reach the user as one line (below). A process that
    # serves (`kinfer serve`) installs its JSON log handler over this one.
    logging.getLogger().addHandler(logging.NullHandler())
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kinfer ... | head`: the reader has gone; stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 (the one place that turns any failure into one line)
        return _fail(exc, _model_named(args))


def _model_named(args: argparse.Namespace) -> str | None:
    """The model a command names (``kinfer models ... NAME``, ``--model``, ``infer MODEL``), for its hints."""
    named = getattr(args, "name", None) if args.command == "models" else getattr(args, "model", None)
    return named if isinstance(named, str) else None


def _fail(exc: Exception, model: str | None = None) -> int:
    """Print ``exc`` as ``shared.cli.errors`` describes and return its exit code (a traceback only with
    KINFER_DEBUG=1); ``model``, the model the command named, fills in the commands a hint suggests."""
    from shared.errors import KinferError
    from shared.settings import ClientSettings, ConfigError

    if isinstance(exc, ApiError):
        error: CliError = name_model(exc, model)
    elif isinstance(exc, CliError):
        error = exc
    elif isinstance(exc, ConfigError):
        error = UsageError(str(exc), code="config")
    elif isinstance(exc, KinferError):
        error = CliError(exc.message, code=exc.code)
    elif type(exc).__module__.startswith("sqlalchemy"):  # kinfer db / keys bootstrap: the DATABASE_URL database
        cause = getattr(exc, "orig", None) or exc
        error = CliError(
            str(cause).splitlines()[0][:300],
            code="database",
            hint="check DATABASE_URL (is PostgreSQL up? `kinfer status`)",
        )
    else:
        try:
            debug = ClientSettings.from_env().debug
        except ConfigError:
            debug = False
        if debug:
            raise exc
        error = CliError(f"{type(exc).__name__}: {exc}", code="unexpected", hint="KINFER_DEBUG=1 shows the traceback")
    sys.stderr.write("".join(f"{line}\n" for line in error.lines()))
    return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
