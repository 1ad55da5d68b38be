"""HTTP plumbing shared by every HTTP function (ASGI: functions-framework's async mode).

``dispatch`` is the one place where a request becomes a response: it assigns the
request id, continues the W3C trace, routes by path (werkzeug's URL map), enforces
auth when the route asks for a scope, reads the body under MAX_BODY_BYTES, runs the
handler and turns any ``KinferError`` into the JSON error body (the HTTP contract in
``docs/architecture.md``). An unexpected exception is logged with its traceback and
answered with a generic 500 sentence; exception text never reaches the caller.

Handlers are ``async def`` (run on the event loop: they must not block) or plain
``def`` (run in the thread pool: database and S3 calls). A route reads its body up
front unless it says ``stream=True``, in which case an ``async`` handler consumes
``call.stream()`` itself. A route that names its ``query`` parameters answers 400 for any
other (as for unknown body fields). OPTIONS is answered for every routed path (``Allow``,
and CORS preflight for the origins of CORS_ALLOWED_ORIGINS, ``shared.web.cors``).
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from werkzeug.exceptions import MethodNotAllowed as _WzMethodNotAllowed
from werkzeug.exceptions import NotFound as _WzNotFound
from werkzeug.routing import Map, Rule

from shared import telemetry
from shared.errors import InvalidInput, KinferError, MethodNotAllowed, NotFound, PayloadTooLarge
from shared.logs import request_id_var
from shared.web import cors

if TYPE_CHECKING:
    from shared.services import Services

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON_TYPE = "application/json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class QueryParam:
    """A documented query parameter (OpenAPI): its name, JSON Schema and one-line description."""

    name: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"}, compare=False)
    description: str = ""


@dataclass(frozen=True)
class Route:
    """One path rule: ``handler(call, **params)``; ``scope`` None means no auth ("any" = any valid key).

    ``stream`` routes get the body unread: their (async) handler iterates ``call.stream()``.
    ``query`` names the query parameters the route takes, as names or documented ``QueryParam``s: any
    other parameter is 400 (as for unknown body fields); None means not checked.
    The remaining fields only document the route in its function's OpenAPI document
    (``shared.web.openapi``): ``summary``; ``body``, the JSON Schema of the request body;
    ``responses``, ``{status: (description, JSON Schema or None[, media type])}`` of its
    successful answers (errors are documented for every route). A route without them is
    listed with a generic description.
    """

    rule: str
    methods: tuple[str, ...]
    handler: Callable[..., Any]
    scope: str | None = None
    stream: bool = False
    query: tuple[QueryParam | str, ...] | None = None
    summary: str = ""
    body: Mapping[str, Any] | None = field(default=None, compare=False)
    responses: Mapping[int, tuple[Any, ...]] | None = field(default=None, compare=False)

    @property
    def query_params(self) -> tuple[QueryParam, ...]:
        """The query parameters as ``QueryParam``s (a bare name is documented as a string)."""
        return tuple(q if isinstance(q, QueryParam) else QueryParam(q) for q in self.query or ())

    @property
    def query_names(self) -> tuple[str, ...] | None:
        return None if self.query is None else tuple(q.name for q in self.query_params)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


async def _alive(call: Call) -> dict[str, str]:
    return {"status": "alive"}


# Liveness: answers while the process serves HTTP, whatever PostgreSQL, Redis or Triton do
# (readiness stays on /health); a failing dependency must not get pods restarted.
LIVEZ = Route("/livez", ("GET",), _alive, query=(), summary="Liveness (touches no dependency)",
              responses={200: ("alive", {"type": "object", "required": ["status"],
                                         "properties": {"status": {"const": "alive"}}})})


OPENAPI_PATH = "/openapi.json"


def _openapi_route(routes: list[Route]) -> Route:
    """``GET /openapi.json``: the OpenAPI document of ``routes`` (built on first use)."""
    built: dict[str, Any] = {}

    async def serve_openapi(call: Call) -> dict[str, Any]:
        if "doc" not in built:
            from shared.web.openapi import document

            built["doc"] = document(routes, title=f"Kinfer {call.services.settings.service_name}")
        return built["doc"]

    return Route(OPENAPI_PATH, ("GET",), serve_openapi, query=(), summary="This function's OpenAPI 3.1 document",
                 responses={200: ("the OpenAPI document", {"type": "object"})})


class Router:
    """Routes requests by path and method with werkzeug's URL map."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        if not any(r.rule == OPENAPI_PATH for r in self.routes):  # every router documents itself
            self.routes.append(_openapi_route(self.routes))
        self._map = Map([Rule(r.rule, endpoint=i, methods=list(r.methods)) for i, r in enumerate(self.routes)],
                        strict_slashes=False, merge_slashes=False)
        self._adapter = self._map.bind("kinfer")

    def match(self, path: str, method: str) -> tuple[Route, dict[str, Any]]:
        try:
            index, params = self._adapter.match(path, method=method)
        except _WzNotFound:
            raise NotFound(f"no route for {method} {path}") from None
        except _WzMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allowed}",
                                   headers={"Allow": allowed}) from None
        return self.routes[int(index)], dict(params)

    def allowed_methods(self, path: str) -> list[str]:
        """The methods some route serves on ``path`` (empty when no route matches it)."""
        return sorted(self._adapter.allowed_methods(path))


def check_query(query: Any, allowed: tuple[str, ...]) -> None:
    """400 naming the first query parameter the route does not take, or one given twice."""
    seen: set[str] = set()
    for name, _ in query.multi_items():
        if name not in allowed:
            takes = f"allowed: {', '.join(allowed)}" if allowed else "this route takes no query parameters"
            raise InvalidInput(f"unknown query parameter {name[:64]!r}; {takes}", field=name[:64])
        if name in seen:
            raise InvalidInput(f"query parameter {name!r} is given more than once", field=name)
        seen.add(name)


@dataclass
class Call:
    """What a handler sees of one request."""

    request: Request
    services: Services
    request_id: str
    trace_id: str = ""
    principal: Any = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def headers(self) -> Mapping[str, str]:
        return self.request.headers

    @property
    def args(self) -> Mapping[str, str]:
        """The query parameters (first value of each)."""
        return self.request.query_params

    def query(self, name: str) -> str | None:
        return self.request.query_params.get(name)

    def json(self) -> Any:
        """The JSON body, strictly parsed (400 when empty or malformed)."""
        return parse_json(self.body)

    def stream(self, limit: int | None = None) -> AsyncIterator[bytes]:
        """The body in chunks as it arrives (``stream=True`` routes), 413 past ``limit`` bytes."""
        return stream_body(self.request, limit)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidInput("request body is empty; a JSON object is required", field="body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # the message names the position, never the content
        reason = str(exc).split(":", 1)[0]
        raise InvalidInput(f"request body is not valid JSON ({reason})", field="body") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (413 by Content-Length or by what arrives)."""
    declared = _content_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


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


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit():
        raise InvalidInput("Content-Length must be a non-negative integer", field="Content-Length")
    return int(raw)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer; NaN and infinities become null (JSON has no such numbers)."""
    content = orjson.dumps(body, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=dict(headers or {}), media_type=JSON_TYPE)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def request_id_of(headers: Mapping[str, str]) -> str:
    incoming = headers.get("x-request-id", "")
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


async def dispatch(request: Request, router: Router, services: Services, span_name: str) -> Response:
    """Route, authorize and run one request; always answers JSON (see module docstring)."""
    request_id = request_id_of(request.headers)
    token = request_id_var.set(request_id)
    try:
        with telemetry.server_span(span_name, request.headers, **{"http.request.method": request.method,
                                                                  "url.path": request.url.path}) as span:
            call = Call(request=request, services=services, request_id=request_id,
                        trace_id=telemetry.trace_id_of(span))
            if request.method == "OPTIONS":
                response = _options(call, router)
            else:
                response = await _run(call, router, span)
            cors.decorate(response, request.headers, services.settings.cors_allowed_origins)
            response.headers["X-Request-ID"] = request_id
            if call.trace_id:
                response.headers["X-Trace-ID"] = call.trace_id
            for key, value in call.response_headers.items():
                response.headers.setdefault(key, value)
            span.set_attribute("http.response.status_code", response.status_code)
            return response
    finally:
        request_id_var.reset(token)


def _options(call: Call, router: Router) -> Response:
    """OPTIONS: ``Allow`` for a routed path, a CORS preflight answer when it is one (no auth: browsers
    send no credentials with a preflight)."""
    path = call.request.url.path
    try:
        methods = router.allowed_methods(path)
        if not methods:
            raise NotFound(f"no route for OPTIONS {path}")
        return cors.options_response(call.request.headers, [*methods, "OPTIONS"],
                                     call.services.settings.cors_allowed_origins)
    except KinferError as exc:
        return error_response(exc, call.request_id, call.trace_id)


async def _run(call: Call, router: Router, span: Any) -> Response:
    request = call.request
    try:
        route, params = router.match(request.url.path, request.method)
        span.update_name(f"{request.method} {route.rule}")
        if route.scope is not None and call.services.settings.auth_required:
            from shared.access.auth import authorize

            call.principal = await run_in_threadpool(authorize, call, route.scope)
        allowed = route.query_names
        if allowed is not None and request.scope.get("query_string"):
            check_query(request.query_params, allowed)
        if not route.stream and request.method in _BODY_METHODS:
            call.body = await read_body(request, call.services.settings.max_body_bytes)
        if route.is_async:
            result = await route.handler(call, **params)
        else:
            result = await run_in_threadpool(route.handler, call, **params)
        return _as_response(result)
    except KinferError as exc:
        if exc.status >= 500:
            log.warning("request failed: %s %s (%s)", exc.status, exc.code, exc.message)
        return error_response(exc, call.request_id, call.trace_id)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        generic = KinferError("internal error; the request id identifies it in the logs")
        return error_response(generic, call.request_id, call.trace_id)
