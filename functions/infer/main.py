"""The real-time inference function: POST /v1/infer and the KServe v2 routes (``shared.inference``)."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.inference.dataplane import run_inference as infer
from shared.web import schemas as s
from shared.web.http import LIVEZ, Call, Route, Router, dispatch
from shared.web.runtime import function_services


def _route_key(call: Call) -> str | None:
    """Who keeps their side of a canary split: ``X-Route-Key``, else the API key."""
    return (call.headers.get("x-route-key") or "")[:256] or getattr(call.principal, "key_id", None)


def _infer(call: Call) -> dict:
    answer = infer(call.services, call.json(), _route_key(call))
    answer["request_id"] = call.request_id
    answer["trace_id"] = call.trace_id
    call.response_headers["X-Model-Version"] = answer["version"]
    return answer


def _infer_v2(call: Call, name: str, version: str | None = None) -> dict:
    from shared.inference.v2 import infer_v2

    answer = infer_v2(call.services, name, version, call.body, call.headers, _route_key(call))
    call.response_headers["X-Model-Version"] = answer["model_version"]
    return answer


def _metadata_v2(call: Call, name: str, version: str | None = None) -> dict:
    from shared.inference.v2 import model_metadata_v2

    return model_metadata_v2(call.services, name, version)


def _health(call: Call) -> tuple[int, dict]:
    redis_ok = call.services.cache.ping()
    return 200, {"status": "healthy" if redis_ok else "degraded", "service": call.services.settings.service_name,
                 "checks": {"cache": "ok" if redis_ok else "unreachable"}}


_V2_INFER = {"summary": "KServe v2 inference", "body": s.V2_INFER_REQUEST,
             "responses": {200: ("the output tensors", s.V2_INFER_RESPONSE)}}
_V2_METADATA = {"summary": "KServe v2 model metadata", "responses": {200: ("tensors and versions", s.V2_METADATA)}}

ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), _health, query=(), summary="Health: Redis", responses=s.HEALTH_ANSWERS),
    Route("/v1/infer", ("POST",), _infer, query=(), scope="infer", summary="Real-time inference", body=s.INFER_REQUEST,
          responses={200: ("the prediction and every output tensor", s.INFER_RESPONSE)}),
    Route("/v2/models/<name>/infer", ("POST",), _infer_v2, query=(), scope="infer", **_V2_INFER),
    Route("/v2/models/<name>/versions/<version>/infer", ("POST",), _infer_v2, query=(), scope="infer", **_V2_INFER),
    Route("/v2/models/<name>", ("GET",), _metadata_v2, query=(), scope="infer", **_V2_METADATA),
    Route("/v2/models/<name>/versions/<version>", ("GET",), _metadata_v2, query=(), scope="infer", **_V2_METADATA),
])


@functions_framework.aio.http
async def run_inference(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "infer")
