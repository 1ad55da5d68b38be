"""The model registry function: /v1/models (``shared.registry``) and the model lifecycle
(``shared.lifecycle``: artifacts, aliases, load state); and KServe's v1 ``:predict``
(``shared.inference.kserve_v1``), which lives under /v1/models, on the data path of /v1/infer."""

from __future__ import annotations

from collections.abc import Mapping

import functions_framework.aio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from shared.domain import ModelVersion
from shared.errors import InvalidInput, NotFound
from shared.inference import kserve_v1
from shared.inference.waiting import preferred_wait
from shared.lifecycle.rollout import RolloutStatus
from shared.lifecycle.shadow import ShadowSummary, shadow_summary
from shared.web import schemas as s
from shared.web.audit import actor_of
from shared.web.capture import capture_routes
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.route import LIVEZ, QueryParam, Route
from shared.web.routing import Router
from shared.web.runtime import function_services


def _create(call: Call) -> tuple[int, ModelVersion, dict[str, str]]:
    model = function_services().artifacts.create_model(call.json(), actor_of(call))
    return 201, model, {"Location": f"/v1/models/{model['id']}"}


async def _upload(call: Call, model_id: str) -> ModelVersion:
    limit = function_services().settings.max_artifact_bytes
    sha256 = call.query("sha256") or call.headers.get("x-content-sha256")
    try:
        return await function_services().artifacts.receive_upload(model_id, call.stream(limit), sha256, actor_of(call))
    except ClientDisconnect:
        raise InvalidInput(
            "the upload was interrupted; nothing was installed, PUT the file again", field="body"
        ) from None


def _delete(call: Call, model_id: str) -> Response:
    function_services().versions.delete_version(model_id, actor_of(call))
    return Response(status_code=204)


def _put_alias(call: Call, name: str, alias: str) -> Mapping[str, object]:
    return function_services().aliases.put_alias(name, alias, call.json(), actor_of(call))


def _shadow(call: Call, name: str, alias: str) -> ShadowSummary:
    services = function_services()
    if call.request.method == "PUT":
        services.aliases.set_shadow(name, alias, call.json(), actor_of(call))
    return shadow_summary(services.aliases.get_alias(name, alias), services.shadow_stats)


def _rollout(call: Call, name: str, alias: str, action: str | None = None) -> RolloutStatus:
    rollouts = function_services().rollouts
    if action is None:
        return (
            rollouts.status(name, alias)
            if call.request.method == "GET"
            else rollouts.start(name, alias, call.json(), actor_of(call))
        )
    if action not in ("pause", "resume", "abort"):
        raise NotFound(f"no rollout action {action[:32]!r}: pause, resume or abort", code="route_not_found")
    return getattr(rollouts, action)(name, alias, actor_of(call))  # type: ignore[no-any-return]


def _delete_alias(call: Call, name: str, alias: str) -> Response:
    function_services().aliases.delete_alias(name, alias, actor_of(call))
    return Response(status_code=204)


async def _predict_v1(call: Call, name: str, version: str | None = None) -> kserve_v1.PredictAnswer:
    services = function_services()
    wait = preferred_wait(call.header("prefer"), services.settings.wait_max_s)
    route_key = (call.header("x-route-key") or "")[:256] or getattr(call.principal, "key_id", None)
    ids = (call.request_id, call.trace_id)
    key_id = getattr(call.principal, "key_id", None)
    answer = await kserve_v1.predict(services.dataplane, name, version, call.json(), route_key, wait, ids, key_id)
    call.response_headers["X-Model-Version"] = answer["model_version"]
    return answer


_PREDICTS = {200: ("one prediction per instance", s.V1_PREDICT_RESPONSE)}

ROUTES = Router(
    [
        *(
            Route(
                rule,
                ("POST",),
                _predict_v1,
                scope="infer",
                always_auth=True,  # AUTH_REQUIRED=false opens the registry (locally), never inference
                query=(),
                summary="KServe v1 predict: {instances} -> {predictions}, as POST /v1/infer",
                body=s.V1_PREDICT_REQUEST,
                responses=_PREDICTS,
            )
            for rule in ("/v1/models/<name>:predict", "/v1/models/<name>/versions/<version>:predict")
        ),
        LIVEZ,
        *capture_routes(lambda: function_services().capture_rules),
        Route(
            "/health",
            ("GET",),
            lambda call: function_services().registry.health(),
            query=(),
            summary="Health: PostgreSQL and Redis",
            responses=s.HEALTH_ANSWERS,
        ),
        Route(
            "/v1/models",
            ("POST",),
            _create,
            query=(),
            scope="admin",
            summary="Register a model version (metadata, an artifact_uri, or upload: true)",
            body=s.MODEL_CREATE,
            responses={201: ("the model", s.MODEL)},
        ),
        Route(
            "/v1/models",
            ("GET",),
            lambda call: function_services().registry.list_models(call.args),
            scope="any",
            query=s.MODEL_FILTERS,
            summary="List models, newest first: filters, a page, and with include=aliases each name's aliases",
            responses={200: ("a page of models", s.MODEL_LIST)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases",
            ("GET",),
            lambda call, name: function_services().aliases.list_aliases(name),
            query=(),
            scope="any",
            summary="A model's aliases",
            responses={200: ("every alias and its split", s.ALIAS_LIST)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>",
            ("GET",),
            lambda call, name, alias: function_services().aliases.get_alias(name, alias),
            query=(),
            scope="any",
            summary="One alias",
            responses={200: ("the alias and its split", s.ALIAS)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>",
            ("PUT",),
            _put_alias,
            query=(),
            scope="admin",
            summary="Point an alias at a version, or split it between versions",
            body=s.ALIAS_TARGET,
            responses={200: ("the alias as it now is", s.ALIAS)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>",
            ("DELETE",),
            _delete_alias,
            query=(),
            scope="admin",
            summary="Delete an alias",
            responses={204: ("deleted", None)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>/rollback",
            ("POST",),
            lambda call, name, alias: function_services().aliases.rollback(name, alias, actor_of(call)),
            query=(),
            scope="admin",
            summary="Move an alias back to where it pointed before",
            responses={200: ("the alias", s.ALIAS)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>/shadow",
            ("GET", "PUT"),
            _shadow,
            query=(),
            scope="admin",
            summary="An alias's shadow versions ({version: percent}) and what mirroring showed per pair",
            body=s.SHADOW_SET,
            responses={200: ("the shadow versions and their figures", s.SHADOW_SUMMARY)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>/rollout",
            ("GET", "POST"),
            _rollout,
            query=(),
            scope="admin",
            summary="An alias's automatic rollout: start one (POST) or see where it is (GET)",
            body=s.ROLLOUT_START,
            responses={200: ("the rollout", s.ROLLOUT)},
        ),
        Route(
            "/v1/models/by-name/<name>/aliases/<alias>/rollout/<action>",
            ("POST",),
            _rollout,
            query=(),
            scope="admin",
            summary="Pause, resume or abort (back to the baseline) an alias's rollout",
            responses={200: ("the rollout", s.ROLLOUT)},
        ),
        Route(
            "/v1/models/by-name/<name>/<version>",
            ("GET",),
            lambda call, name, version: function_services().registry.get_model_by_name(name, version),
            query=(),
            scope="any",
            summary="A model by name and version",
            responses={200: ("the model", s.MODEL)},
        ),
        Route(
            "/v1/models/<model_id>",
            ("GET",),
            lambda call, model_id: function_services().registry.get_model(model_id),
            query=(),
            scope="any",
            summary="A model by id",
            responses={200: ("the model", s.MODEL)},
        ),
        Route(
            "/v1/models/<model_id>/status",
            ("GET",),
            lambda call, model_id: function_services().versions.version_status(model_id),
            query=(),
            scope="any",
            summary="A version's load state on every replica",
            responses={200: ("the state", s.VERSION_STATUS)},
        ),
        Route(
            "/v1/models/<model_id>",
            ("PUT", "PATCH"),
            lambda call, model_id: function_services().artifacts.update_model(model_id, call.json(), actor_of(call)),
            query=(),
            scope="admin",
            summary="Update a model (partial)",
            body=s.MODEL_UPDATE,
            responses={200: ("the whole model", s.MODEL)},
        ),
        Route(
            "/v1/models/<model_id>",
            ("DELETE",),
            _delete,
            query=(),
            scope="admin",
            summary="Delete a model version",
            responses={204: ("deleted", None)},
        ),
        Route(
            "/v1/models/<model_id>/artifact",
            ("PUT",),
            _upload,
            scope="admin",
            stream=True,
            query=(
                QueryParam(
                    "sha256",
                    {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "the file's SHA-256 (or the X-Content-SHA256 header)",
                ),
            ),
            summary="Upload the model file (ONNX or .tar.gz), streamed; the agent loads it",
            body={"type": "string", "format": "binary"},
            responses={200: ("the model, state pending", s.MODEL)},
        ),
    ],
    title="Kinfer models",
)


@functions_framework.aio.http
async def manage_models(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "models")
