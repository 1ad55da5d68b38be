"""HTTP plumbing shared by every HTTP function (ASGI: functions-framework's async mode).

``dispatch`` is the one place where a request becomes a response: it assigns the
request id, continues the W3C trace, routes by path (``Router``: werkzeug-style rules
such as ``/v1/models/<model_id>``), enforces auth when the route asks for a scope
(async: no thread hop), reads the body under MAX_BODY_BYTES, runs the handler and turns
any ``KinferError`` into the JSON error body (the HTTP contract in
``docs/architecture.md``). An unexpected exception is logged with its traceback and
answered with a generic 500 sentence; exception text never reaches the caller.

Handlers are ``async def`` (run on the event loop: they must not block) or plain
``def`` (run in the thread pool: database and S3 calls). A route reads its body up
front unless it says ``stream=True``, in which case an ``async`` handler consumes
``call.stream()`` itself. ``call.json()`` parses strictly: JSON content types only
(415 otherwise; no Content-Type and curl's default form type are read as JSON), no
duplicate keys, no NaN or infinities. A route that names its ``query`` parameters answers
400 for any other (as for unknown body fields). OPTIONS is answered for every routed path
(``Allow``, and CORS preflight for the origins of CORS_ALLOWED_ORIGINS, ``shared.web.cors``).
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared import telemetry
from shared import validation as v
from shared.errors import (
    InvalidInput,
    KinferError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from shared.logs import request_id_var
from shared.web import cors

if TYPE_CHECKING:
    from shared.services import Services

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON_TYPE = "application/json"
_JSON_MEDIA = frozenset({"application/json", "application/x-www-form-urlencoded"})
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
LIVEZ = Route(
    "/livez",
    ("GET",),
    _alive,
    query=(),
    summary="Liveness (touches no dependency)",
    responses={
        200: ("alive", {"type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}})
    },
)


OPENAPI_PATH = "/openapi.json"


def _openapi_route(routes: list[Route]) -> Route:
    """``GET /openapi.json``: the OpenAPI document of ``routes`` (built on first use)."""
    built: dict[str, Any] = {}

    async def serve_openapi(call: Call) -> dict[str, Any]:
        if "doc" not in built:
            from shared.web.openapi import document

            built["doc"] = document(routes, title=f"Kinfer {call.services.settings.service_name}")
        found: dict[str, Any] = built["doc"]
        return found

    return Route(
        OPENAPI_PATH,
        ("GET",),
        serve_openapi,
        query=(),
        summary="This function's OpenAPI 3.1 document",
        responses={200: ("the OpenAPI document", {"type": "object"})},
    )


_PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")
_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "default": ("[^/]+", str),
    "string": ("[^/]+", str),
    "path": (".+", str),
    "int": (r"\d+", int),
}


class Router:
    """Routes requests by path and method: werkzeug-style rules (``<name>``, ``<path:name>``, ``<int:n>``),
    static rules before dynamic ones, a trailing slash ignored; 404 or 405 (with ``Allow``) otherwise."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        if not any(r.rule == OPENAPI_PATH for r in self.routes):  # every router documents itself
            self.routes.append(_openapi_route(self.routes))
        self._static: dict[str, list[Route]] = {}
        self._dynamic: list[tuple[re.Pattern[str], Route, dict[str, Callable[[str], Any]]]] = []
        for route in self.routes:
            rule = _normal(route.rule)
            if "<" not in rule:
                self._static.setdefault(rule, []).append(route)
            else:
                pattern, converters = _compile(rule)
                self._dynamic.append((pattern, route, converters))

    def match(self, path: str, method: str) -> tuple[Route, dict[str, Any]]:
        normal = _normal(path)
        found: list[tuple[Route, dict[str, Any]]] = [(r, {}) for r in self._static.get(normal, ())]
        for pattern, route, converters in self._dynamic:
            m = pattern.fullmatch(normal)
            if m is not None:
                found.append((route, {k: converters[k](v) for k, v in m.groupdict().items()}))
        if not found:
            raise NotFound(f"no route for {method} {path}")
        for route, params in found:
            if method in route.methods or (method == "HEAD" and "GET" in route.methods):
                return route, params
        methods = {m for route, _ in found for m in route.methods}
        allowed = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allowed}", headers={"Allow": allowed})

    def allowed_methods(self, path: str) -> list[str]:
        """The methods some route serves on ``path`` (empty when no route matches it)."""
        normal = _normal(path)
        routes = list(self._static.get(normal, ())) + [r for p, r, _ in self._dynamic if p.fullmatch(normal)]
        methods = {m for route in routes for m in route.methods}
        return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def _normal(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def _compile(rule: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    parts, converters, at = [], {}, 0
    for m in _PARAM.finditer(rule):
        kind = m.group("converter") or "default"
        if kind not in _CONVERTERS:
            raise ValueError(f"route {rule!r}: unknown converter {kind!r}")
        pattern, convert = _CONVERTERS[kind]
        parts += [re.escape(rule[at : m.start()]), f"(?P<{m.group('name')}>{pattern})"]
        converters[m.group("name")] = convert
        at = m.end()
    parts.append(re.escape(rule[at:]))
    return re.compile("".join(parts)), converters


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

    def json(self) -> Any:
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


def parse_json(raw: bytes) -> Any:
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


def request_id_of(headers: Mapping[str, str]) -> str:
    """The caller's X-Request-ID when it is sane, else 32 random hex digits (an id, not a secret)."""
    incoming = headers.get("x-request-id")
    return incoming if incoming and _REQUEST_ID.match(incoming) else f"{random.getrandbits(128):032x}"


class HeaderDict(dict[str, str]):
    """Request headers by lower-case name; ``get`` takes any case (built once per request, then dict lookups
    instead of Starlette's scan of the raw header list)."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


def header_dict(scope: Mapping[str, Any]) -> HeaderDict:
    """The request's headers by lower-case name (the first of repeated ones, as Starlette's ``get``)."""
    found = HeaderDict()
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


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
    scope = request.scope
    headers = header_dict(scope)
    request_id = request_id_of(headers)
    token = request_id_var.set(request_id)
    try:
        with telemetry.server_span(
            span_name, headers, **{"http.request.method": scope["method"], "url.path": scope["path"]}
        ) as span:
            call = Call(
                request=request,
                services=services,
                request_id=request_id,
                trace_id=telemetry.trace_id_of(span),
                _by_name=headers,
            )
            if scope["method"] == "OPTIONS":
                response = _options(call, router)
            else:
                response = await _run(call, router, span)
            cors.decorate(response, headers, services.settings.cors_allowed_origins)
            extra = [(b"x-request-id", request_id.encode())]
            if call.trace_id:
                extra.append((b"x-trace-id", call.trace_id.encode()))
            if call.response_headers:
                present = {name for name, _ in response.raw_headers}
                extra += [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in call.response_headers.items()
                    if k.lower().encode("latin-1") not in present
                ]
            response.raw_headers.extend(extra)
            if span.is_recording():
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
        return cors.options_response(
            call.request.headers, [*methods, "OPTIONS"], call.services.settings.cors_allowed_origins
        )
    except KinferError as exc:
        return error_response(exc, call.request_id, call.trace_id)


async def _run(call: Call, router: Router, span: Any) -> Response:
    request = call.request
    method, path = request.scope["method"], request.scope["path"]
    try:
        route, params = router.match(path, method)
        if span.is_recording():
            span.update_name(f"{method} {route.rule}")
        if route.scope is not None and call.services.settings.auth_required:
            from shared.access.auth import authorize

            call.principal = await authorize(call, route.scope)
        allowed = route.query_names
        if allowed is not None and request.scope.get("query_string"):
            check_query(request.query_params, allowed)
        if not route.stream and method in _BODY_METHODS:
            call.body = await read_body(request, call.services.settings.max_body_bytes, call.header("content-length"))
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
        log.exception("unhandled error in %s %s", method, path)
        generic = KinferError("internal error; the request id identifies it in the logs")
        return error_response(generic, call.request_id, call.trace_id)
