"""The ``kinfer`` command line: local stack, database, keys, batch, inference and contexts.

Each sub-command group lives in its own module of this package with a
``register(subparsers)`` function that adds its parsers and sets ``func``
(a callable taking the parsed args and returning an exit code). Commands that
call the HTTP API connect through ``shared.cli.api`` (flags, KINFER_URL /
KINFER_API_KEY, config file contexts). Every failure is one line on stderr
with the exit code of ``shared.cli.errors``; KINFER_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shared.cli.errors import EXIT_FAILED, EXIT_USAGE, CliError

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
    "keys",
    "agent",
    "deploy",
    "completion",
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("kinfer")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kinfer",
        description="Kinfer: serverless inference on Knative and Triton.",
        epilog="API commands take --url/--key/--context (or KINFER_URL, KINFER_API_KEY, `kinfer config`). "
        "Exit codes: 0 ok, 1 failed (API error), 2 usage, 3 batch items failed (--fail-on-errors).",
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
        return _fail(exc)


def _fail(exc: Exception) -> int:
    """Print ``exc`` as one line and return its exit code (a traceback only with KINFER_DEBUG=1)."""
    from shared.errors import KinferError
    from shared.settings import ClientSettings, ConfigError

    if isinstance(exc, CliError):
        message, code = exc.message, exc.exit_code
    elif isinstance(exc, ConfigError):
        message, code = str(exc), EXIT_USAGE
    elif isinstance(exc, KinferError):
        message, code = exc.message, EXIT_FAILED
    elif type(exc).__module__.startswith("sqlalchemy"):  # kinfer db / keys bootstrap: the DATABASE_URL database
        cause = getattr(exc, "orig", None) or exc
        message = f"database error: {str(cause).splitlines()[0][:300]} (check DATABASE_URL)"
        code = EXIT_FAILED
    else:
        try:
            debug = ClientSettings.from_env().debug
        except ConfigError:
            debug = False
        if debug:
            raise exc
        message = f"unexpected error: {type(exc).__name__}: {exc} (KINFER_DEBUG=1 shows the traceback)"
        code = EXIT_FAILED
    sys.stderr.write(f"kinfer: {' '.join(str(message).split())}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
