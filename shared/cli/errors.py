"""What a ``kinfer`` command can fail with, its exit code, and the one way every failure is printed.

Exit codes: 0 success; 1 the operation failed at run time (the API answered an error, could
not be reached, or a step of the local stack failed); 2 the command cannot run as given (bad
arguments, a file that does not exist, configuration or context, an ambiguous id prefix);
3 ``batch submit --fail-on-errors`` saw failed items; 130 interrupted.

Every failure reaches stderr in one format (``shared.cli.main`` prints it)::

    error: <code>: <message> (field <field>, HTTP <status>, request id <id>)
    hint: <what to do>

``code`` is the API's error code (``not_found``, ``version_aliased``, ...) or the CLI's own
(``usage``, ``unreachable``, ``config``, ``database``, ``unexpected``); the parenthesis holds
what is known, and the hint line is there when there is something to do.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ITEMS_FAILED = 0, 1, 2, 3

EXIT_CODES = (
    "exit codes: 0 ok; 1 failed at run time (the API's error, unreachable, a failed job); 2 usage "
    "(bad arguments, a missing file, an ambiguous id prefix); 3 batch items failed (--fail-on-errors)"
)


class CliError(Exception):
    """A failure shown as ``error: <code>: <message>``, with an optional ``hint`` line."""

    exit_code = EXIT_FAILED
    code = "failed"

    def __init__(self, message: str, *, hint: str = "", code: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
        if code:
            self.code = code

    def details(self) -> list[str]:
        """What goes in the parenthesis after the message."""
        return []

    def lines(self) -> list[str]:
        """The failure as printed: the error line, then the hint line when there is one."""
        details = self.details()
        extra = f" ({', '.join(details)})" if details else ""
        first = f"error: {self.code}: {' '.join(self.message.split())}{extra}"
        return [first, f"hint: {' '.join(self.hint.split())}"] if self.hint else [first]


class UsageError(CliError):
    """The command cannot run as given: arguments, files, configuration, context."""

    exit_code = EXIT_USAGE
    code = "usage"


class ApiError(CliError):
    """The API answered an error (``status``, ``code``, ``field``, ``request_id``), could not be reached
    (code ``unreachable``), or an API operation did not end well (a timeout, a failed upload)."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str = "",
        *,
        field: str = "",
        request_id: str = "",
        hint: str = "",
    ) -> None:
        super().__init__(message, hint=hint, code=code or (f"http_{status}" if status else "failed"))
        self.status, self.field, self.request_id = status, field, request_id

    def details(self) -> list[str]:
        found = [f"field {self.field}"] if self.field else []
        found += [f"HTTP {self.status}"] if self.status else []
        return found + ([f"request id {self.request_id}"] if self.request_id else [])


def hint_for(status: int | None, code: str, model: str = "") -> str:
    """What to do about an API error of this kind, when the command has nothing more specific; ``model``
    (the model the command named) fills in the commands it suggests."""
    if status is None:
        return ""
    if status == 401:
        return "check the key: `kinfer config current-context` shows which one is used (--key, KINFER_API_KEY)"
    if status == 403:
        return "this key lacks the scope; use a key with it (an admin creates one: `kinfer keys create --scopes ...`)"
    if status == 429:
        return "rate limited: retry later, or use a key with a higher limit"
    if code in ("version_not_found", "no_active_version", "version_failed"):
        return f"`kinfer models versions {model or 'NAME'}` lists the model's versions and their state"
    if code == "alias_not_found":
        return f"`kinfer models aliases {model or 'NAME'}` lists the model's aliases"
    if code in ("not_found", "model_not_found") and model:
        return "`kinfer models list` shows the registered models"
    if status in (502, 503, 504):
        return "the backend is busy, waking or down: retry in a moment; `kinfer status` shows the local stack"
    return ""


def name_model(exc: ApiError, model: str | None) -> ApiError:
    """``exc`` with its generic hint (``hint_for``) made specific to ``model``, the model the command named."""
    if model and exc.hint == hint_for(exc.status, exc.code):
        exc.hint = hint_for(exc.status, exc.code, model)
    return exc
