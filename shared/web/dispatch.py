"""The request pipeline of every HTTP function (ASGI: functions-framework's async mode).

``dispatch`` is the one place where a request becomes a response: it assigns the
request id, continues the W3C trace, routes by path (``Router``: werkzeug-style rules
such as ``/v1/models/<model_id>``), enforces auth when the route asks for a scope
(async: no thread hop; with AUTH_REQUIRED off only on ``always_auth`` routes: inference and debug),
reads the body under MAX_BODY_BYTES, runs the handler and turns
any ``KinferError`` into the JSON error body (the HTTP contract in
``docs/architecture.md``). An unexpected exception is logged with its traceback and
answered with a generic 500 sentence; exception text never reaches the caller. A 4xx
answer is logged at info level (request id, route, status, code and the key's id, never
its secret or the body) and counted per key (``kinfer_http_client_errors_total``); a
5xx ``KinferError`` is logged as a warning.

Handlers are ``async def`` (run on the event loop: they must not block) or plain
``def`` (run in the thread pool: database and S3 calls). A route reads its body up
front unless it says ``stream=True``, in which case an ``async`` handler consumes
``call.stream()`` itself. A handler may return a starlette ``Response`` of its own (a ``StreamingResponse`` of
server-sent events: it streams after ``dispatch`` returned, so it handles its own failures and the client
going away). ``call.json()`` parses strictly: JSON content types only
(415 otherwise; no Content-Type and curl's default form type are read as JSON), no
duplicate keys, no NaN or infinities. A route that names its ``query`` parameters answers
400 for any other (as for unknown body fields). OPTIONS is answered for every routed path
(``Allow``, and CORS preflight for the origins of CORS_ALLOWED_ORIGINS, ``shared.web.cors``).

CloudEvents take the same pipeline: an ``event=True`` route first verifies the sender's OIDC token
when EVENT_AUTH=oidc (``shared.access.eventauth``: 401 before the body is read), then parses the body
as a CloudEvent (binary or structured mode, ``shared.web.events``), continues the trace of
``ce-traceparent``, and answers failures with the status that steers Knative's redelivery.

``dispatch`` sees of the process only its ``Host``: the settings, the authenticator and the event
senders' authenticator (built on first use), which the functions' composition root
(``shared.services.Services``) provides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared import telemetry
from shared.errors import KinferError, NotFound
from shared.logs import request_id_var
from shared.web import cors
from shared.web.events import event_error_status, parse_event
from shared.web.request import Call, header_dict, read_body, request_id_of
from shared.web.responses import as_response, error_response
from shared.web.routing import Router, check_query

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Authorizer(Protocol):
    async def authorize(self, call: Call, scope: str) -> Any:
        """The caller's principal for a route of ``scope`` (401/403/429 otherwise)."""


class EventSenders(Protocol):
    def verify(self, headers: Mapping[str, str]) -> str | None:
        """The event sender's identity (None when event auth is off); 401 (or 503) otherwise."""


class Host(Protocol):
    """What the pipeline needs of the process that serves it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def auth(self) -> Authorizer: ...

    @property
    def event_auth(self) -> EventSenders: ...


ErrorShape = Callable[[KinferError, str, str], Response]  # (error, request id, trace id) -> the answer


async def dispatch(
    request: Request, router: Router, host: Host, span_name: str, errors: ErrorShape = error_response
) -> Response:
    """Route, authorize and run one request; always answers JSON (see module docstring). ``errors`` shapes
    the error answers (the OpenAI-compatible routes answer OpenAI's error shape)."""
    scope = request.scope
    headers = header_dict(scope)
    request_id = request_id_of(headers)
    token = request_id_var.set(request_id)
    carrier: dict[str, str] = headers
    if "ce-traceparent" in headers and "traceparent" not in headers:  # a CloudEvent in binary mode
        carrier = {"traceparent": headers["ce-traceparent"]}
    try:
        with telemetry.server_span(
            span_name, carrier, **{"http.request.method": scope["method"], "url.path": scope["path"]}
        ) as span:
            call = Call(
                request=request,
                request_id=request_id,
                trace_id=telemetry.trace_id_of(span),
                _by_name=headers,
            )
            settings = host.settings
            if scope["method"] == "OPTIONS":
                response = _options(call, router, settings, errors)
            else:
                response = await _run(call, router, span, host, errors)
            cors.decorate(response, headers, settings.cors_allowed_origins)
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


def _options(call: Call, router: Router, settings: Settings, errors: ErrorShape) -> Response:
    """OPTIONS: ``Allow`` for a routed path, a CORS preflight answer when it is one (no auth: browsers
    send no credentials with a preflight)."""
    path = call.request.url.path
    try:
        methods = router.allowed_methods(path)
        if not methods:
            raise NotFound(f"no route for OPTIONS {path}")
        return cors.options_response(call.request.headers, [*methods, "OPTIONS"], settings.cors_allowed_origins)
    except KinferError as exc:
        return errors(exc, call.request_id, call.trace_id)


async def _run(call: Call, router: Router, span: Any, host: Host, errors: ErrorShape) -> Response:
    request = call.request
    method, path = request.scope["method"], request.scope["path"]
    route = None
    try:
        route, params = router.match(path, method)
        if span.is_recording():
            span.update_name(f"{method} {route.rule}")
        settings = host.settings
        if route.event and settings.event_auth != "none":  # the sender's token, before the body is even read
            await run_in_threadpool(host.event_auth.verify, call.header_map)
        if route.scope is not None and (settings.auth_required or route.always_auth):
            call.principal = await host.auth.authorize(call, route.scope)
        allowed = route.query_names
        if allowed is not None and request.scope.get("query_string"):
            check_query(request.query_params, allowed)
        if not route.stream and method in _BODY_METHODS:
            call.body = await read_body(request, settings.max_body_bytes, call.header("content-length"))
        if route.event:
            event = parse_event(call.header_map, call.body)
            span.set_attribute("cloudevents.event_id", str(event["id"]))
            span.set_attribute("cloudevents.event_type", str(event["type"]))
            params["event"] = event
        if route.is_async:
            result = await route.handler(call, **params)
        else:
            result = await run_in_threadpool(route.handler, call, **params)
        return as_response(result)
    except KinferError as exc:
        if route is not None and route.event:
            return _event_failure(call, exc)
        if exc.status >= 500:
            log.warning("request failed: %s %s (%s)", exc.status, exc.code, exc.message)
        elif exc.status >= 400:
            _client_error(call, method, route.rule if route is not None else path, exc)
        return errors(exc, call.request_id, call.trace_id)
    except Exception:
        if route is not None and route.event:
            log.exception("unhandled error in %s %s; answering 503 so the event is retried", method, path)
            response = error_response(
                KinferError("internal error; the event will be retried"), call.request_id, call.trace_id
            )
            response.status_code = 503
            return response
        log.exception("unhandled error in %s %s", method, path)
        generic = KinferError("internal error; the request id identifies it in the logs")
        return errors(generic, call.request_id, call.trace_id)


def _client_error(call: Call, method: str, where: str, exc: KinferError) -> None:
    """Log and count one 4xx answer: the key's id (never its secret), never the body."""
    principal = call.principal
    key_id = getattr(principal, "key_id", None) if principal is not None else None
    telemetry.metrics().client_error(key_id, exc.status, exc.code)
    log.info(
        "client error %s %s: %s %s%s key_id=%s request_id=%s",
        exc.status,
        exc.code,
        method,
        where.encode("utf-8", "backslashreplace").decode()[:200],
        f" field={exc.field[:64]}" if exc.field else "",
        key_id or telemetry.NO_KEY,
        call.request_id,
    )


def _event_failure(call: Call, exc: KinferError) -> Response:
    """A failed CloudEvent: the status that tells Knative whether to redeliver (``event_error_status``)."""
    status = event_error_status(exc)
    log.warning("event failed with %s (%s): %s", status, exc.code, exc.message)
    response = error_response(exc, call.request_id, call.trace_id)
    response.status_code = status
    return response
