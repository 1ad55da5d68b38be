"""The model registry function: CRUD over /v1/models (``shared.registry``)."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared import registry
from shared.web.http import LIVEZ, Call, Route, Router, dispatch
from shared.web.runtime import function_services


def _create(call: Call) -> tuple[int, dict, dict]:
    model = registry.create_model(call.services, call.json())
    return 201, model, {"Location": f"/v1/models/{model['id']}"}


def _list(call: Call) -> dict:
    return registry.list_models(call.services, call.args)


def _get(call: Call, model_id: str) -> dict:
    return registry.get_model(call.services, model_id)


def _get_by_name(call: Call, name: str, version: str) -> dict:
    return registry.get_model_by_name(call.services, name, version)


def _update(call: Call, model_id: str) -> dict:
    return registry.update_model(call.services, model_id, call.json())


def _delete(call: Call, model_id: str) -> Response:
    registry.delete_model(call.services, model_id)
    return Response(status_code=204)


def _health(call: Call) -> tuple[int, dict]:
    return registry.health(call.services)


# The filters and paging of registry.list_models.
LIST_QUERY = ("name", "framework", "status", "tag", "limit", "offset")

ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), _health, query=()),
    Route("/v1/models", ("POST",), _create, scope="admin", query=()),
    Route("/v1/models", ("GET",), _list, scope="any", query=LIST_QUERY),
    Route("/v1/models/by-name/<name>/<version>", ("GET",), _get_by_name, scope="any", query=()),
    Route("/v1/models/<model_id>", ("GET",), _get, scope="any", query=()),
    Route("/v1/models/<model_id>", ("PUT", "PATCH"), _update, scope="admin", query=()),
    Route("/v1/models/<model_id>", ("DELETE",), _delete, scope="admin", query=()),
])


@functions_framework.aio.http
async def manage_models(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "models")
