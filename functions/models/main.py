"""The model registry function: CRUD over /v1/models (``shared.registry``)."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared import registry
from shared.web import schemas as s
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


ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), _health, query=(), summary="Health: PostgreSQL and Redis", responses=s.HEALTH_ANSWERS),
    Route("/v1/models", ("POST",), _create, query=(), scope="admin", summary="Register a model version",
          body=s.MODEL_CREATE, responses={201: ("the model", s.MODEL)}),
    Route("/v1/models", ("GET",), _list, scope="any", summary="List models, newest first",
          query=s.MODEL_FILTERS, responses={200: ("a page of models", s.MODEL_LIST)}),
    Route("/v1/models/by-name/<name>/<version>", ("GET",), _get_by_name, query=(), scope="any",
          summary="A model by name and version", responses={200: ("the model", s.MODEL)}),
    Route("/v1/models/<model_id>", ("GET",), _get, query=(), scope="any", summary="A model by id",
          responses={200: ("the model", s.MODEL)}),
    Route("/v1/models/<model_id>", ("PUT", "PATCH"), _update, query=(), scope="admin",
          summary="Update a model (partial)", body=s.MODEL_UPDATE, responses={200: ("the whole model", s.MODEL)}),
    Route("/v1/models/<model_id>", ("DELETE",), _delete, query=(), scope="admin", summary="Delete a model",
          responses={204: ("deleted", None)}),
])


@functions_framework.aio.http
async def manage_models(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "models")
