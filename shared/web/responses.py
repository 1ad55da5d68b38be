"""Answers: JSON bodies encoded once with orjson (NaN and infinities as null), and the one place a
``KinferError`` becomes the JSON error body of the HTTP contract (``error``, ``code``, ``field``,
``request_id``, ``trace_id``; ``Retry-After`` when the error says when to retry).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from shared.errors import KinferError

JSON_TYPE = "application/json"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer; NaN and infinities become null (JSON has no such numbers)."""
    return JsonResponse(orjson.dumps(body, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY), status, headers)


class JsonResponse(Response):
    """A pre-encoded JSON body with its headers built once (``Response.__init__`` does more work)."""

    media_type = JSON_TYPE

    def __init__(self, content: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        self.body = content
        self.background = None
        self.raw_headers = [(b"content-length", str(len(content)).encode()), (b"content-type", _JSON_CT)]
        if headers:
            self.raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


_JSON_CT = JSON_TYPE.encode()


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def error_response(exc: KinferError, request_id: str, trace_id: str) -> Response:
    body = exc.body()
    body["request_id"] = request_id
    if trace_id:
        body["trace_id"] = trace_id
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return json_response(body, exc.status, headers)


def as_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):  # (status, body) or (status, body, headers)
        status, body, *headers = result
        return json_response(body, status, *headers)
    return json_response(result)
