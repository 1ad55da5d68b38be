"""The real-time inference function: POST /v1/infer and the KServe v2 protocol (``shared.inference``).

Every handler is ``async``: the whole request runs on the event loop. Server health and
metadata (``/v2``, ``/v2/health/*``) need no key, like Triton's, so load balancers can
probe them; everything that names a model needs the ``infer`` scope. A version segment or
``version`` field may name a version or an alias; the version that answered comes back in
the body and in ``X-Model-Version``.

``Prefer: respond-async`` on either infer route answers 202 with ``Location: /v1/requests/{id}`` (the
request runs on the batch worker, ``shared.batch.requests``; ``Kinfer-Callback-URL`` names an optional
signed callback); ``GET /v1/requests/{id}`` (a plain ``def``: it reads PostgreSQL in the thread pool)
answers its status, then its result.

The OpenAI-compatible routes (``shared.inference.openai``): ``POST /v1/chat/completions`` and
``POST /v1/completions``, the same under ``/openai/v1`` with ``GET /openai/v1/models`` (the base URL
for the ``openai`` client), answer OpenAI's shapes, errors included (``{"error": {"message", "type",
"param", "code"}}``), and ``stream: true`` as server-sent events. ``GET /v1/models`` stays the registry's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypedDict

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.batch.requests import V1, V2, Accepted, RequestMatches, RequestStatus, prefers_async
from shared.domain import owner_of
from shared.errors import InvalidInput, KinferError
from shared.inference import v2
from shared.inference.dataplane import InferAnswer
from shared.inference.health import HealthBody, ReadyBody
from shared.inference.waiting import preferred_wait
from shared.web import schemas as s
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.responses import json_response
from shared.web.route import LIVEZ, QueryParam, Route
from shared.web.routing import Router
from shared.web.runtime import function_services

if TYPE_CHECKING:
    from shared.inference import openai  # imported on first use: the cold start of /v1/infer does not pay for it

CALLBACK_HEADER = "kinfer-callback-url"


class Live(TypedDict):
    live: bool


def _route_key(call: Call) -> str | None:
    """Who keeps their side of a canary split: ``X-Route-Key``, else the API key."""
    return (call.header("x-route-key") or "")[:256] or getattr(call.principal, "key_id", None)


def _wait(call: Call) -> float:
    """``Prefer: wait=N``: hold the request up to N seconds (at most WAIT_MAX_S) while the backend wakes."""
    wait = preferred_wait(call.header("prefer"), function_services().settings.wait_max_s)
    if wait:
        call.response_headers["Preference-Applied"] = f"wait={wait:g}"
    return wait


def _respond_async(call: Call) -> bool:
    """``Prefer: respond-async``: 202 and a request to poll (or a callback) instead of the answer."""
    if not prefers_async(call.header("prefer")):
        if call.header(CALLBACK_HEADER) is not None:
            raise InvalidInput(f"{CALLBACK_HEADER} needs Prefer: respond-async", field=CALLBACK_HEADER)
        return False
    return True


async def _accept(
    call: Call, protocol: str, name: str | None = None, version: str | None = None
) -> tuple[int, Accepted, dict[str, str]]:
    accepted = await function_services().requests.accept(
        protocol,
        call.body,
        call.header_map,
        owner=owner_of(call.principal),
        route_key=_route_key(call),
        request_id=call.request_id,
        trace_id=call.trace_id,
        name=name,
        version=version,
        callback_url=call.header(CALLBACK_HEADER),
    )
    call.response_headers["Preference-Applied"] = "respond-async"  # only once it was: never on a refusal
    return 202, accepted, {"Location": accepted["location"]}


def _owner_filter(call: Call) -> str | None:
    """Whose requests the caller may read: its own key's; an admin key, any (None)."""
    scopes = getattr(call.principal, "scopes", ())
    return None if "admin" in scopes else owner_of(call.principal)


def _request(call: Call, request_id: str) -> RequestStatus:
    return function_services().requests.get(request_id, _owner_filter(call))


def _requests_with_prefix(call: Call) -> RequestMatches:
    return function_services().requests.find(call.args.get("prefix"), owner_of(call.principal))


async def _infer(call: Call) -> InferAnswer | tuple[int, Accepted, dict[str, str]]:
    if _respond_async(call):
        call.json()  # the Content-Type check and strict parse of a synchronous call
        return await _accept(call, V1)
    key_id = getattr(call.principal, "key_id", None)
    answer = await function_services().dataplane.run_inference(call.json(), _route_key(call), _wait(call), key_id)
    answer["request_id"] = call.request_id
    answer["trace_id"] = call.trace_id
    call.response_headers["X-Model-Version"] = answer["version"]
    return answer


async def _infer_v2(
    call: Call, name: str, version: str | None = None
) -> v2.InferResponse | tuple[int, Accepted, dict[str, str]]:
    if _respond_async(call):
        return await _accept(call, V2, name, version)
    key_id = getattr(call.principal, "key_id", None)
    answer = await function_services().v2.infer_v2(
        name, version, call.body, call.header_map, _route_key(call), _wait(call), key_id
    )
    call.response_headers["X-Model-Version"] = answer["model_version"]
    return answer


async def _metadata_v2(call: Call, name: str, version: str | None = None) -> v2.ModelMetadata:
    return await function_services().v2.model_metadata_v2(name, version)


async def _ready_v2(call: Call, name: str, version: str | None = None) -> v2.ModelReady:
    return await function_services().v2.model_ready_v2(name, version)


async def _config_v2(call: Call, name: str, version: str | None = None) -> v2.JSONObject:
    return await function_services().v2.model_config_v2(name, version)


async def _server_v2(call: Call) -> v2.ServerMetadata:
    return v2.server_metadata()


async def _live_v2(call: Call) -> Live:
    return {"live": True}


async def _ready(call: Call) -> tuple[int, ReadyBody]:
    return await function_services().infer_health.server_ready()


async def _health(call: Call) -> tuple[int, HealthBody]:
    return await function_services().infer_health.health()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may buffer the tokens


async def _openai_completion(
    call: Call, kind: openai.Kind
) -> openai.ChatCompletion | openai.TextCompletion | StreamingResponse:
    from shared.inference import openai

    openai.check_size(call.body)
    caller = openai.Caller(call.principal, _route_key(call), call.request_id, _wait(call))
    outcome = await function_services().openai.complete(kind, call.json(), caller)
    call.response_headers["X-Model-Version"] = outcome.version
    if outcome.stream is not None:
        return StreamingResponse(outcome.stream, media_type="text/event-stream", headers=SSE_HEADERS)
    assert outcome.body is not None
    return outcome.body


async def _chat_completions(call: Call) -> openai.ChatCompletion | openai.TextCompletion | StreamingResponse:
    return await _openai_completion(call, "chat")


async def _completions(call: Call) -> openai.ChatCompletion | openai.TextCompletion | StreamingResponse:
    return await _openai_completion(call, "text")


async def _openai_models(call: Call) -> openai.ModelList:
    return await function_services().openai.models()


async def _openai_model(call: Call, model: str) -> openai.ModelCard:
    return await function_services().openai.model(model)


OPENAI_PREFIXES = ("/openai/", "/v1/chat/", "/v1/completions")


def _openai_error(exc: KinferError, request_id: str, trace_id: str) -> Response:
    """An error of the OpenAI-compatible routes in OpenAI's shape (``Retry-After`` and auth headers kept)."""
    from shared.inference.openai import error_body

    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return json_response(error_body(exc), exc.status, headers)


_OBJECT = {"type": "object"}
MODEL = "/v2/models/<name>"
VERSION = "/v2/models/<name>/versions/<version>"
ROUTES = Router(
    [
        LIVEZ,
        Route(
            "/health",
            ("GET",),
            _health,
            query=(),
            summary="Health: Redis, registry, backends",
            responses=s.HEALTH_ANSWERS,
        ),
        Route(
            "/v1/infer",
            ("POST",),
            _infer,
            query=(),
            scope="infer",
            summary="Real-time inference",
            body=s.INFER_REQUEST,
            responses={
                200: ("the prediction and every output tensor", s.INFER_RESPONSE),
                202: (s.ASYNC_ACCEPTED_DESCRIPTION, s.INFER_ACCEPTED),
            },
        ),
        Route(
            "/v1/requests",
            ("GET",),
            _requests_with_prefix,
            query=(QueryParam("prefix", {"type": "string"}, "the start of a request id: 4 or more hex digits"),),
            scope="infer",
            always_auth=True,
            summary="The caller's own async requests whose id starts with prefix (kinfer requests get 3f2a)",
            responses={200: ("the matching requests, newest first", s.INFER_REQUEST_MATCHES)},
        ),
        Route(
            "/v1/requests/<request_id>",
            ("GET",),
            _request,
            query=(),
            scope="infer",
            summary="An async inference request: status, then its result or error",
            responses={200: ("status, timestamps, the result or the error body", s.INFER_REQUEST_STATUS)},
        ),
        Route(
            "/v2",
            ("GET",),
            _server_v2,
            query=(),
            summary="KServe v2 server metadata",
            responses={200: ("name, version, extensions", _OBJECT)},
        ),
        Route(
            "/v2/health/live",
            ("GET",),
            _live_v2,
            query=(),
            summary="KServe v2 liveness",
            responses={200: ("live", _OBJECT)},
        ),
        Route(
            "/v2/health/ready",
            ("GET",),
            _ready,
            query=(),
            summary="KServe v2 readiness",
            responses={200: ("ready", _OBJECT), 503: ("not ready", _OBJECT)},
        ),
        *[
            Route(
                base + "/infer",
                ("POST",),
                _infer_v2,
                query=(),
                scope="infer",
                summary="KServe v2 inference",
                body=s.V2_INFER_REQUEST,
                responses={
                    200: ("the output tensors", s.V2_INFER_RESPONSE),
                    202: (s.ASYNC_ACCEPTED_DESCRIPTION, s.INFER_ACCEPTED),
                },
            )
            for base in (MODEL, VERSION)
        ],
        *[
            Route(
                base,
                ("GET",),
                _metadata_v2,
                query=(),
                scope="infer",
                summary="KServe v2 model metadata",
                responses={200: ("tensors and versions", s.V2_METADATA)},
            )
            for base in (MODEL, VERSION)
        ],
        *[
            Route(
                base + "/ready",
                ("GET",),
                _ready_v2,
                query=(),
                scope="infer",
                summary="KServe v2 model readiness",
                responses={200: ("ready", _OBJECT)},
            )
            for base in (MODEL, VERSION)
        ],
        *[
            route
            for base in ("/v1", "/openai/v1")
            for route in (
                Route(
                    base + "/chat/completions",
                    ("POST",),
                    _chat_completions,
                    query=(),
                    scope="infer",
                    summary="OpenAI-compatible chat completion (stream: true for server-sent events)",
                    body=s.OPENAI_CHAT_REQUEST,
                    responses={**s.OPENAI_ERRORS, 200: ("the completion", s.OPENAI_CHAT_COMPLETION)},
                ),
                Route(
                    base + "/completions",
                    ("POST",),
                    _completions,
                    query=(),
                    scope="infer",
                    summary="OpenAI-compatible completion (stream: true for server-sent events)",
                    body=s.OPENAI_COMPLETION_REQUEST,
                    responses={**s.OPENAI_ERRORS, 200: ("the completion", s.OPENAI_TEXT_COMPLETION)},
                ),
            )
        ],
        Route(
            "/openai/v1/models",
            ("GET",),
            _openai_models,
            query=(),
            scope="infer",
            summary="OpenAI-compatible model list: text-generation models and their aliases (name:alias)",
            responses={**s.OPENAI_ERRORS, 200: ("the models", s.OPENAI_MODEL_LIST)},
        ),
        Route(
            "/openai/v1/models/<model>",
            ("GET",),
            _openai_model,
            query=(),
            scope="infer",
            summary="One model of the OpenAI-compatible model list",
            responses={**s.OPENAI_ERRORS, 200: ("the model", s.OPENAI_MODEL)},
        ),
        *[
            Route(
                base + "/config",
                ("GET",),
                _config_v2,
                query=(),
                scope="infer",
                summary="The model's configuration",
                responses={200: ("Triton's model configuration under the registry name", _OBJECT)},
            )
            for base in (MODEL, VERSION)
        ],
    ],
    title="Kinfer infer",
)


@functions_framework.aio.http
async def run_inference(request: Request) -> Response:
    path = request.scope["path"]
    if path.startswith(OPENAI_PREFIXES) or path == "/openai":
        return await dispatch(request, ROUTES, function_services(), "infer", _openai_error)
    return await dispatch(request, ROUTES, function_services(), "infer")
