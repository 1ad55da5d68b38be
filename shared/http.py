"""HTTP plumbing shared by every HTTP function.

``dispatch`` is the one place where a request becomes a response: it assigns the
request id, continues the W3C trace, routes by path (werkzeug's URL map),
enforces auth when the route asks for a scope, parses JSON under a body-size
limit, and turns any ``KinferError`` into the JSON error body of DESIGN.md
section 3. An unexpected exception is logged with its traceback and answered
with a generic 500 sentence; exception text never reaches the caller.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Request, Response
from werkzeug.exceptions import MethodNotAllowed as _WzMethodNotAllowed
from werkzeug.exceptions import NotFound as _WzNotFound
from werkzeug.routing import Map, Rule

from shared import telemetry
from shared.errors import InvalidInput, KinferError, MethodNotAllowed, NotFound, PayloadTooLarge
from shared.logs import request_id_var

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Route:
    """One path rule: ``handler(call, **params)``; ``scope`` None means no auth ("any" = any valid key)."""

    rule: str
    methods: tuple[str, ...]
    handler: Callable[..., Any]
    scope: str | None = None


# Liveness: answers while the process serves HTTP, whatever PostgreSQL, Redis or Triton do
# (readiness stays on /health); a failing dependency must not get pods restarted.
LIVEZ = Route("/livez", ("GET",), lambda call: {"status": "alive"})


class Router:
    """Routes requests by path and method with werkzeug's URL map."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        self._map = Map([Rule(r.rule, endpoint=i, methods=list(r.methods)) for i, r in enumerate(self.routes)],
                        strict_slashes=False, merge_slashes=False)

    def match(self, path: str, method: str) -> tuple[Route, dict[str, Any]]:
        adapter = self._map.bind("kinfer", path_info=path)
        try:
            index, params = adapter.match(path, method=method)
        except _WzNotFound:
            raise NotFound(f"no route for {method} {path}") from None
        except _WzMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allowed}",
                                   headers={"Allow": allowed}) from None
        return self.routes[int(index)], dict(params)


@dataclass
class Call:
    """What a handler sees of one request."""

    request: Request
    services: Any
    request_id: str
    trace_id: str = ""
    principal: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The JSON body, bounded by MAX_BODY_BYTES (413) and strictly parsed (400)."""
        return parse_json_body(self.request, self.services.settings.max_body_bytes)

    def query(self, name: str) -> str | None:
        return self.request.args.get(name)


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def parse_json_body(request: Request, limit: int) -> Any:
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit} bytes")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    if not raw.strip():
        raise InvalidInput("request body is empty; a JSON object is required", field="body")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise InvalidInput(f"request body is {reason}", field="body") from None


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    text = json.dumps(body, separators=(",", ":"), default=_json_default)
    return Response(text, status=status, headers=dict(headers or {}), mimetype=JSON_TYPE)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def request_id_of(request: Request) -> str:
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def error_response(exc: KinferError, request_id: str, trace_id: str) -> Response:
    body = exc.body()
    body["request_id"] = request_id
    if trace_id:
        body["trace_id"] = trace_id
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return json_response(body, exc.status, headers)


def _as_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):  # (status, body) or (status, body, headers)
        status, body, *headers = result
        return json_response(body, status, *headers)
    return json_response(result)


def dispatch(request: Request, router: Router, services: Any, span_name: str) -> Response:
    """Route, authorize and run one request; always answers JSON (see module docstring)."""
    request_id = request_id_of(request)
    token = request_id_var.set(request_id)
    try:
        with telemetry.server_span(span_name, request.headers, **{"http.request.method": request.method,
                                                                  "url.path": request.path}) as span:
            call = Call(request=request, services=services, request_id=request_id,
                        trace_id=telemetry.trace_id_of(span))
            response = _run(call, router, span)
            response.headers["X-Request-ID"] = request_id
            if call.trace_id:
                response.headers["X-Trace-ID"] = call.trace_id
            for key, value in call.response_headers.items():
                response.headers.setdefault(key, value)
            span.set_attribute("http.response.status_code", response.status_code)
            return response
    finally:
        request_id_var.reset(token)


def _run(call: Call, router: Router, span: Any) -> Response:
    try:
        route, params = router.match(call.request.path, call.request.method)
        span.update_name(f"{call.request.method} {route.rule}")
        if route.scope is not None and call.services.settings.auth_required:
            from shared.auth import authorize

            call.principal = authorize(call, route.scope)
        return _as_response(route.handler(call, **params))
    except KinferError as exc:
        if exc.status >= 500:
            log.warning("request failed: %s %s (%s)", exc.status, exc.code, exc.message)
        return error_response(exc, call.request_id, call.trace_id)
    except Exception:
        log.exception("unhandled error in %s %s", call.request.method, call.request.path)
        generic = KinferError("internal error; the request id identifies it in the logs")
        return error_response(generic, call.request_id, call.trace_id)
