"""What a handler sees of one request (``Call``), and how its parts are read: headers (one dict built
per request), the request id, the body under a byte limit (or streamed), strict JSON.

``call.json()`` parses strictly: JSON content types only (415 otherwise; no Content-Type and curl's
default form type are read as JSON), no duplicate keys, no NaN or infinities.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Scope

from shared import validation as v
from shared.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_JSON_MEDIA = frozenset({"application/json", "application/x-www-form-urlencoded"})


@dataclass
class Call:
    """What a handler sees of one request."""

    request: Request
    request_id: str
    trace_id: str = ""
    principal: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    _by_name: HeaderDict | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    @property
    def header_map(self) -> HeaderDict:
        """The request headers as a dict (case-insensitive ``get``; the first of repeated ones)."""
        if self._by_name is None:
            self._by_name = header_dict(self.request.scope)
        return self._by_name

    def header(self, name: str) -> str | None:
        """One request header by lower-case ``name``: a dict lookup."""
        found: str | None = self.header_map.get(name)
        return found

    @property
    def args(self) -> Mapping[str, str]:
        """The query parameters (first value of each)."""
        return self.request.query_params

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def json(self) -> object:
        """The JSON body, strictly parsed (415 for a non-JSON Content-Type, 400 when empty or malformed)."""
        require_json(self.header("content-type"))
        return parse_json(self.body)

    def stream(self, limit: int | None = None) -> AsyncIterator[bytes]:
        """The body in chunks as it arrives (``stream=True`` routes), 413 past ``limit`` bytes."""
        return stream_body(self.request, limit)


def require_json(content_type: str | None) -> None:
    """415 unless the Content-Type is JSON (``application/json``, ``*/*+json``). No Content-Type and
    ``application/x-www-form-urlencoded`` (what ``curl -d`` sends) are read as JSON too."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_MEDIA or media.endswith("+json"):
        return
    raise UnsupportedMediaType(
        f"Content-Type {media[:100]!r} is not supported here; send the body as application/json", field="Content-Type"
    )


def parse_json(raw: bytes) -> object:
    """Strict JSON (``validation.parse_json``): 400 when empty, malformed, NaN or infinite, or when an
    object repeats a key."""
    return v.parse_json(raw, "body")


async def read_body(request: Request, limit: int, content_length: str | None = None) -> bytes:
    """The whole body, at most ``limit`` bytes (413 by Content-Length or by what arrives)."""
    declared = _content_length(request, content_length)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    parts, size, more = [], 0, True
    while more:  # the ASGI messages themselves (Starlette's stream() adds a generator per request)
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def stream_body(request: Request, limit: int | None) -> AsyncIterator[bytes]:
    declared = _content_length(request)
    if limit is not None and declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit is not None and size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        if chunk:
            yield chunk


def _content_length(request: Request, raw: str | None = None) -> int | None:
    raw = raw if raw is not None else request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise InvalidInput("Content-Length must be a non-negative integer", field="Content-Length")
    return int(raw)


def request_id_of(headers: Mapping[str, str]) -> str:
    """The caller's X-Request-ID when it is sane, else 32 random hex digits (an id, not a secret)."""
    incoming = headers.get("x-request-id")
    return incoming if incoming and _REQUEST_ID.match(incoming) else f"{random.getrandbits(128):032x}"


class HeaderDict(dict[str, str]):
    """Request headers by lower-case name; ``get`` takes any case (built once per request, then dict lookups
    instead of Starlette's scan of the raw header list)."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


def header_dict(scope: Scope) -> HeaderDict:
    """The request's headers by lower-case name (the first of repeated ones, as Starlette's ``get``)."""
    found = HeaderDict()
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found
