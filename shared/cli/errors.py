"""What a ``kinfer`` command can fail with, and its exit code.

Exit codes: 0 success; 1 the operation failed (the API answered an error, could not be
reached, or a step of the local stack failed); 2 the command cannot run as given
(bad arguments, configuration or context); 3 ``batch submit --fail-on-errors`` saw
failed items; 130 interrupted. ``shared.cli.main`` prints each as one line.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ITEMS_FAILED = 0, 1, 2, 3


class CliError(Exception):
    """A failure shown as one line, ``kinfer: <message>``."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CliError):
    """The command cannot run as given: arguments, configuration, context."""

    exit_code = EXIT_USAGE


class ApiError(CliError):
    """The API answered an error (``status``, ``code``), or could not be reached (status None)."""

    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status, self.code = status, code
