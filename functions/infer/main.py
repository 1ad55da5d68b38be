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
"""

from __future__ import annotations

from typing import TypedDict

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.requests import V1, V2, Accepted, RequestMatches, RequestStatus, prefers_async
from shared.domain import owner_of
from shared.errors import InvalidInput
from shared.inference import v2
from shared.inference.dataplane import InferAnswer
from shared.inference.health import HealthBody, ReadyBody
from shared.inference.waiting import preferred_wait
from shared.web import schemas as s
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.route import LIVEZ, QueryParam, Route
from shared.web.routing import Router
from shared.web.runtime import function_services

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
    return await dispatch(request, ROUTES, function_services(), "infer")
