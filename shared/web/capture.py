"""Payload capture settings over HTTP (``shared.inference.capture_rules``).

``PUT``/``DELETE /v1/models/by-name/{name}/capture`` need the admin scope (and are audit-logged);
``GET`` of one setting and ``GET /v1/capture`` (every setting) answer any valid key, like the other
registry reads: a setting names fields, never captured data. ``?alias=`` addresses the setting of one
alias (or version) of the model; without it, the model's own.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response

from shared.inference.capture_rules import CapturePage, CaptureRule, CaptureRules
from shared.web.audit import actor_of
from shared.web.request import Call
from shared.web.route import QueryParam, Route
from shared.web.schemas import Schema

_NULLABLE = {"type": ["string", "null"]}
PATH = "/v1/models/by-name/<name>/capture"

ALIAS_QUERY = (QueryParam("alias", {"type": "string", "maxLength": 64}, "the alias (or version) the setting is for"),)

CAPTURE_SET: Schema = {
    "type": "object",
    "required": ["sample_percent"],
    "additionalProperties": False,
    "properties": {
        "sample_percent": {"type": "number", "minimum": 0, "maximum": 100, "description": "share captured"},
        "redact": {
            "type": "array",
            "maxItems": 64,
            "items": {"type": "string", "maxLength": 128},
            "description": "input fields (tensor names) written as [redacted]",
        },
        "alias": {"type": "string", "maxLength": 64, "description": "only requests naming this alias or version"},
    },
}

CAPTURE_SETTING: Schema = {
    "type": "object",
    "required": ["model", "alias", "sample_percent", "redact", "updated_by", "updated_at"],
    "properties": {
        "model": {"type": "string"},
        "alias": _NULLABLE,
        "sample_percent": {"type": "number"},
        "redact": {"type": "array", "items": {"type": "string"}},
        "updated_by": {"type": "string"},
        "updated_at": _NULLABLE,
    },
}

CAPTURE_LIST: Schema = {
    "type": "object",
    "required": ["settings"],
    "properties": {"settings": {"type": "array", "items": CAPTURE_SETTING}},
}


def capture_routes(rules: Callable[[], CaptureRules]) -> list[Route]:
    """The capture-settings routes on the settings that ``rules()`` returns (the function's services)."""

    def put(call: Call, name: str) -> CaptureRule:
        return rules().put(name, call.json(), actor_of(call))

    def get(call: Call, name: str) -> CaptureRule:
        return rules().get(name, call.args.get("alias"))

    def delete(call: Call, name: str) -> Response:
        rules().delete(name, call.args.get("alias"), actor_of(call))
        return Response(status_code=204)

    def list_all(call: Call) -> CapturePage:
        return rules().list_rules(call.args)

    return [
        Route(
            PATH,
            ("PUT",),
            put,
            query=(),
            scope="admin",
            summary="Capture a share of a model's requests (or of one alias's), redacting named input fields",
            body=CAPTURE_SET,
            responses={200: ("the setting", CAPTURE_SETTING)},
        ),
        Route(
            PATH,
            ("GET",),
            get,
            query=ALIAS_QUERY,
            scope="any",
            summary="A model's capture setting",
            responses={200: ("the setting", CAPTURE_SETTING)},
        ),
        Route(
            PATH,
            ("DELETE",),
            delete,
            query=ALIAS_QUERY,
            scope="admin",
            summary="Stop capturing a model's (or one alias's) requests",
            responses={204: ("deleted", None)},
        ),
        Route(
            "/v1/capture",
            ("GET",),
            list_all,
            query=(QueryParam("model", {"type": "string", "maxLength": 128}, "one model's settings"),),
            scope="any",
            summary="Every capture setting",
            responses={200: ("the settings, by model and alias", CAPTURE_LIST)},
        ),
    ]
