"""The model registry function: /v1/models (``shared.registry``) and the model lifecycle
(``shared.lifecycle``: artifacts, aliases, load state)."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared import registry
from shared.errors import InvalidInput
from shared.lifecycle import aliases, artifacts, versions
from shared.web.http import LIVEZ, Call, Route, Router, dispatch
from shared.web.runtime import function_services


def _create(call: Call) -> tuple[int, dict, dict]:
    model = artifacts.create_model(call.services, call.json())
    return 201, model, {"Location": f"/v1/models/{model['id']}"}


async def _upload(call: Call, model_id: str) -> dict:
    limit = call.services.settings.max_artifact_bytes
    sha256 = call.query("sha256") or call.headers.get("x-content-sha256")
    try:
        return await artifacts.receive_upload(call.services, model_id, call.stream(limit), sha256)
    except ClientDisconnect:
        raise InvalidInput("the upload was interrupted; nothing was installed, PUT the file again",
                           field="body") from None


def _delete(call: Call, model_id: str) -> Response:
    versions.delete_version(call.services, model_id)
    return Response(status_code=204)


def _put_alias(call: Call, name: str, alias: str) -> dict:
    return aliases.put_alias(call.services, name, alias, call.json())


def _delete_alias(call: Call, name: str, alias: str) -> Response:
    aliases.delete_alias(call.services, name, alias)
    return Response(status_code=204)


ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), lambda call: registry.health(call.services)),
    Route("/v1/models", ("POST",), _create, scope="admin"),
    Route("/v1/models", ("GET",), lambda call: registry.list_models(call.services, call.args), scope="any"),
    Route("/v1/models/by-name/<name>/aliases", ("GET",),
          lambda call, name: aliases.list_aliases(call.services, name), scope="any"),
    Route("/v1/models/by-name/<name>/aliases/<alias>", ("GET",),
          lambda call, name, alias: aliases.get_alias(call.services, name, alias), scope="any"),
    Route("/v1/models/by-name/<name>/aliases/<alias>", ("PUT",), _put_alias, scope="admin"),
    Route("/v1/models/by-name/<name>/aliases/<alias>", ("DELETE",), _delete_alias, scope="admin"),
    Route("/v1/models/by-name/<name>/aliases/<alias>/rollback", ("POST",),
          lambda call, name, alias: aliases.rollback(call.services, name, alias), scope="admin"),
    Route("/v1/models/by-name/<name>/<version>", ("GET",),
          lambda call, name, version: registry.get_model_by_name(call.services, name, version), scope="any"),
    Route("/v1/models/<model_id>", ("GET",), lambda call, model_id: registry.get_model(call.services, model_id),
          scope="any"),
    Route("/v1/models/<model_id>/status", ("GET",),
          lambda call, model_id: versions.version_status(call.services, model_id), scope="any"),
    Route("/v1/models/<model_id>", ("PUT", "PATCH"),
          lambda call, model_id: registry.update_model(call.services, model_id, call.json()), scope="admin"),
    Route("/v1/models/<model_id>", ("DELETE",), _delete, scope="admin"),
    Route("/v1/models/<model_id>/artifact", ("PUT",), _upload, scope="admin", stream=True),
])


@functions_framework.aio.http
async def manage_models(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "models")
