"""The real-time inference function: POST /v1/infer and the KServe v2 protocol (``shared.inference``).

Every handler is ``async``: the whole request runs on the event loop. Server health and
metadata (``/v2``, ``/v2/health/*``) need no key, like Triton's, so load balancers can
probe them; everything that names a model needs the ``infer`` scope.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.inference import health, v2
from shared.inference.dataplane import run_inference as infer
from shared.web.http import LIVEZ, Call, Route, Router, dispatch
from shared.web.runtime import function_services


async def _infer(call: Call) -> dict:
    answer = await infer(call.services, call.json())
    answer["request_id"] = call.request_id
    return answer


async def _infer_v2(call: Call, name: str, version: str | None = None) -> dict:
    return await v2.infer_v2(call.services, name, version, call.body, call.headers)


async def _metadata_v2(call: Call, name: str, version: str | None = None) -> dict:
    return await v2.model_metadata_v2(call.services, name, version)


async def _ready_v2(call: Call, name: str, version: str | None = None) -> dict:
    return await v2.model_ready_v2(call.services, name, version)


async def _config_v2(call: Call, name: str, version: str | None = None) -> dict:
    return await v2.model_config_v2(call.services, name, version)


async def _server_v2(call: Call) -> dict:
    return v2.server_metadata()


async def _live_v2(call: Call) -> dict:
    return {"live": True}


async def _ready(call: Call) -> tuple[int, dict]:
    return await health.server_ready(call.services)


async def _health(call: Call) -> tuple[int, dict]:
    return await health.health(call.services)


MODEL = "/v2/models/<name>"
VERSION = "/v2/models/<name>/versions/<version>"
ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), _health),
    Route("/v1/infer", ("POST",), _infer, scope="infer"),
    Route("/v2", ("GET",), _server_v2),
    Route("/v2/health/live", ("GET",), _live_v2),
    Route("/v2/health/ready", ("GET",), _ready),
    *[Route(base + "/infer", ("POST",), _infer_v2, scope="infer") for base in (MODEL, VERSION)],
    *[Route(base, ("GET",), _metadata_v2, scope="infer") for base in (MODEL, VERSION)],
    *[Route(base + "/ready", ("GET",), _ready_v2, scope="infer") for base in (MODEL, VERSION)],
    *[Route(base + "/config", ("GET",), _config_v2, scope="infer") for base in (MODEL, VERSION)],
])


@functions_framework.aio.http
async def run_inference(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "infer")
