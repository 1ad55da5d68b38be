"""How every ``kinfer`` command that talks to the HTTP API connects: URL, key, client.

Each setting is taken from the first of: the flag (``--url``, ``--key``,
``--context``), the environment (``KINFER_URL``, ``KINFER_API_KEY``,
``KINFER_CONTEXT``), the context of the config file (``shared.cli.contexts``;
``--context``, else ``KINFER_CONTEXT``, else its ``current-context``). A context's
key is only ever sent to that context's URL. With no key from any of them, only
the local stack (``http://localhost:8080``) gets its dev key ``demo-token``, and the
command says so on stderr; any other URL without a key is a usage error.

A command module adopts all of this with one call per sub-command::

    api.command(parser, handler)        # handler(client: Client, args) -> exit code
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from shared.cli.errors import ApiError, UsageError, hint_for
from shared.settings import ClientSettings

LOCAL_URL = "http://localhost:8080"
LOCAL_DEV_KEY = "demo-token"  # seeded by `kinfer up`; rate limited, scopes infer, batch, admin
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
TIMEOUT_S = 60
UPLOAD_TIMEOUT_S = 3600

Handler = Callable[["Client", argparse.Namespace], int]


@dataclass(frozen=True)
class Connection:
    """Where and how to call: ``url``, ``key``, and where each came from (for messages)."""

    url: str
    key: str
    context: str = ""
    key_source: str = ""

    @property
    def key_prefix(self) -> str:
        return display_key(self.key)


def display_key(key: str) -> str:
    """Enough of a key to recognise it, never the key (as ``kinfer keys list`` shows it)."""
    if not key:
        return "-"
    return key if key == LOCAL_DEV_KEY else key[: 10 if key.startswith("kf_") else 4] + "..."


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "connection (flags win over KINFER_URL / KINFER_API_KEY, which win over the config file's context)"
    )
    group.add_argument(
        "--url",
        default=None,
        metavar="URL",
        help=f"API base URL (env KINFER_URL; default: the context's, else the local stack {LOCAL_URL})",
    )
    group.add_argument(
        "--key",
        default=None,
        metavar="KEY",
        help="API key (env KINFER_API_KEY; default: the context's; the local stack alone falls "
        f"back to its dev key {LOCAL_DEV_KEY})",
    )
    group.add_argument(
        "--context",
        default=None,
        metavar="NAME",
        help="config file context to use (env KINFER_CONTEXT; default: its current-context)",
    )


def command(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """Give ``parser`` the connection flags and run ``handler(client, args)`` for it."""
    add_connection_args(parser)
    parser.set_defaults(func=lambda args: handler(Client(connect(args)), args))


def connect(args: argparse.Namespace, settings: ClientSettings | None = None) -> Connection:
    """Resolve the connection for parsed ``args`` and say on stderr when the dev key is used."""
    conn = resolve(args, settings or ClientSettings.from_env())
    if conn.key_source == "local dev key":
        print(
            f"kinfer: using the local stack's dev key {LOCAL_DEV_KEY} (no --key, KINFER_API_KEY or context key)",
            file=sys.stderr,
        )
    return conn


def resolve(args: argparse.Namespace, settings: ClientSettings) -> Connection:
    """Flags, then environment, then the context (see the module docstring)."""
    from shared.cli import contexts

    config = contexts.load(contexts.config_path(settings))
    name = getattr(args, "context", None) or settings.context or config.current
    ctx = config.get(name) if name else None
    url, url_from = _first(
        (getattr(args, "url", None), "--url"), (settings.url, "KINFER_URL"), (ctx.url if ctx else "", f"context {name}")
    )
    url = contexts.check_url(url or LOCAL_URL)
    key, key_from = _first((getattr(args, "key", None), "--key"), (settings.api_key, "KINFER_API_KEY"))
    if not key and ctx is not None and ctx.key and contexts.check_url(ctx.url or LOCAL_URL) == url:
        key, key_from = ctx.key, f"context {name}"
    if not key:
        if not is_local(url):
            raise UsageError(
                f"no API key for {url}: pass --key, set KINFER_API_KEY, or add a context with "
                "`kinfer config set-context NAME --url URL --key KEY`"
            )
        key, key_from = LOCAL_DEV_KEY, "local dev key"
    return Connection(url, contexts.check_key(key), name, key_from)


def _first(*candidates: tuple[str | None, str]) -> tuple[str, str]:
    for value, source in candidates:
        if value:
            return value, source
    return "", ""


def is_local(url: str) -> bool:
    """The local stack's gateway (`kinfer up`): plain HTTP on localhost port 8080."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "http" and parts.hostname in LOCAL_HOSTS and (parts.port or 80) == 8080


class Client:
    """A small JSON client of the Kinfer API (stdlib only: the CLI starts fast)."""

    def __init__(self, connection: Connection | str, key: str | None = None) -> None:
        if isinstance(connection, str):  # Client(url, key), as the first batch commands built it
            connection = Connection(connection, key or "", key_source="--key")
        self.connection = connection
        self.base_url = connection.url.rstrip("/")
        self.last_request_id = ""  # of the last answer: an error the CLI draws from a good answer names it

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = TIMEOUT_S,
    ) -> Any:
        """The decoded JSON answer; ApiError (one line, with the API's own message) otherwise."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if self.connection.key:
            request.add_header("Authorization", f"Bearer {self.connection.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                self.last_request_id = response.headers.get("X-Request-ID", "")
        except urllib.error.HTTPError as exc:
            raise api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise unreachable(self.base_url, exc) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiError(
                f"{method} {path}: the answer is not JSON", code="not_json", hint=f"is {self.base_url} a Kinfer API?"
            ) from None

    def upload(self, path: str, file: Path, sha256: str, progress: Any) -> Any:
        """PUT ``file`` to ``path`` (streamed, ``progress.update`` per block) with its SHA-256; the JSON answer."""
        headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {self.connection.key}",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(file.stat().st_size),
        }
        with file.open("rb") as handle:
            request = urllib.request.Request(
                f"{self.base_url}{path}?sha256={sha256}",
                data=_Progress(handle, progress),
                method="PUT",
                headers=headers,
            )
            try:
                with urllib.request.urlopen(request, timeout=UPLOAD_TIMEOUT_S) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                raise api_error(exc) from None
            except (urllib.error.URLError, OSError) as exc:
                raise unreachable(self.base_url, exc) from None
        return json.loads(raw) if raw else None


class _Progress:
    """A file reader that advances a progress bar (urllib streams an object with ``read``)."""

    def __init__(self, handle: BinaryIO, bar: Any) -> None:
        self.handle, self.bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size if size > 0 else 1 << 20)
        self.bar.update(len(block))
        return block


def api_error(exc: urllib.error.HTTPError) -> ApiError:
    """The API's JSON error body as an ApiError: status, code, message, field, request id, and a hint."""
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    rid = exc.headers.get("X-Request-ID", "") if exc.headers else ""
    if not isinstance(body, dict) or "error" not in body:
        return ApiError(f"{exc.reason} (not a Kinfer API error body)", exc.code, request_id=rid)
    code = str(body.get("code", "")) or f"http_{exc.code}"
    hint = hint_for(exc.code, code)
    if exc.code == 429 and exc.headers and exc.headers.get("Retry-After"):
        hint = f"rate limited: retry in {exc.headers['Retry-After']}s, or use a key with a higher limit"
    return ApiError(
        str(body["error"]),
        exc.code,
        code,
        field=str(body.get("field") or ""),
        request_id=str(body.get("request_id") or rid),
        hint=hint,
    )


def unreachable(base_url: str, exc: BaseException) -> ApiError:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.timeout | TimeoutError):
        reason = f"no answer within {TIMEOUT_S}s"
    hint = "is the local stack up? (`kinfer up`, `kinfer status`)" if is_local(base_url) else "check --url"
    return ApiError(f"cannot reach {base_url} ({reason})", code="unreachable", hint=hint)
