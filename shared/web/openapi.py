"""The OpenAPI 3.1 document of a set of routes, generated from the routes themselves.

Every ``shared.web.routing.Route`` becomes one operation per method: its path (werkzeug
``<name>``/``<conv:name>`` -> ``{name}``), its summary, query parameters, request body and
successful answers as the route documents them, its security when it has a scope, and the
error answers every route can give (one shared ``Error`` schema: the HTTP contract of
``docs/architecture.md``). A route that documents nothing still appears, generically, so a
new route is never missing from the document. Each HTTP function serves its own routes at
``/openapi.json`` (``Router`` adds the route); the local gateway serves the union of what it
mounts (``shared.cli.serve``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from shared.web.route import Route

JSONObject = dict[str, object]  # OpenAPI documents and their fragments are arbitrary JSON

ERROR_SCHEMA: JSONObject = {
    "type": "object",
    "additionalProperties": False,
    "required": ["error", "code", "request_id"],
    "properties": {
        "error": {"type": "string", "description": "a sentence for people"},
        "code": {"type": "string", "description": "a machine code, e.g. invalid_input, not_found, circuit_open"},
        "field": {"type": "string", "description": "the input field at fault, when there is one"},
        "request_id": {"type": "string"},
        "trace_id": {"type": "string"},
    },
}

# The errors any route may answer, beyond what it documents itself.
_ERRORS = {
    400: "bad input (the field and the reason)",
    404: "unknown resource (also a malformed id)",
    405: "method not allowed (Allow lists the others)",
    413: "body over MAX_BODY_BYTES",
    414: "request target too long",
    431: "request head too large",
    500: "unexpected error (generic sentence; the request id finds it in the logs)",
    503: "a dependency is unavailable or a circuit is open (Retry-After)",
}
_AUTH_ERRORS = {
    401: "no or unknown API key (WWW-Authenticate)",
    403: "the key lacks the route's scope",
    429: "rate limited (Retry-After)",
}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PARAM = re.compile(r"<(?:[a-zA-Z_]+(?:\([^)]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]


def openapi_path(rule: str) -> str:
    """``/v1/models/<model_id>`` -> ``/v1/models/{model_id}``."""
    return _PARAM.sub(r"{\1}", rule)


def document(routes: Iterable[Route], title: str, description: str = "") -> JSONObject:
    """The OpenAPI 3.1 document of ``routes``."""
    paths: dict[str, JSONObject] = {}
    for route in routes:
        item = paths.setdefault(openapi_path(route.rule), {})
        for method in route.methods:
            if method in ("HEAD", "OPTIONS"):
                continue
            item[method.lower()] = operation(route, method)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": _version(),
            "description": description or "Kinfer: serverless inference on Knative. Every error is the Error object.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "responses": {
                "Error": {
                    "description": "an error (the HTTP contract: status, code, field, request and trace ids)",
                    "headers": {"X-Request-ID": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def operation(route: Route, method: str) -> JSONObject:
    """One OpenAPI operation for ``method`` on ``route``."""
    path = openapi_path(route.rule)
    op: JSONObject = {
        "operationId": _operation_id(method, path),
        "summary": route.summary or f"{method} {path} (undocumented)",
        "responses": _responses(route, method),
    }
    tag = next((p for p in path.split("/") if p and not p.startswith("v") and "{" not in p), None)
    if tag:
        op["tags"] = [tag]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(route.rule)
    ]
    parameters += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "schema": dict(q.schema),
            **({"description": q.description} if q.description else {}),
        }
        for q in route.query_params
    ]
    if parameters:
        op["parameters"] = parameters
    if method in _BODY_METHODS and not route.stream:
        schema = dict(route.body) if route.body is not None else {}
        op["requestBody"] = {"required": route.body is not None, "content": {"application/json": {"schema": schema}}}
    if route.scope is not None:
        op["security"] = _SECURITY
        op["x-kinfer-scope"] = route.scope
    return op


def _responses(route: Route, method: str) -> dict[str, JSONObject]:
    documented = dict(route.responses or {})
    if not documented:
        documented = {200: ("success (undocumented route)", {})}
    out: dict[str, JSONObject] = {}
    for status, spec in sorted(documented.items()):
        description, schema, *rest = (*spec, None) if len(spec) == 2 else spec
        media = rest[0] if rest and rest[0] else "application/json"
        answer: JSONObject = {
            "description": description,
            "headers": {"X-Request-ID": {"schema": {"type": "string"}}},
        }
        if schema is not None:
            answer["content"] = {media: {"schema": dict(schema)}}
        out[str(status)] = answer
    errors = dict(_ERRORS)
    if route.scope is not None:
        errors.update(_AUTH_ERRORS)
    for status, description in sorted(errors.items()):
        out.setdefault(str(status), {"$ref": "#/components/responses/Error", "description": description})
    out["default"] = {"$ref": "#/components/responses/Error"}
    return out


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.split("/") if w]
    return "_".join([method.lower(), *[re.sub(r"[^A-Za-z0-9]", "_", w) for w in words]]) or method.lower()


def _version() -> str:
    try:
        return metadata.version("kinfer")
    except metadata.PackageNotFoundError:
        return "0"


def under_prefix(rule: str, prefix: str) -> bool:
    """Whether a route's rule is served through a gateway path prefix (``/v2/`` or ``/v1/models``)."""
    base = prefix.rstrip("/")
    return rule == base or rule.startswith(base + "/")


def mounted_routes(mounts: Iterable[tuple[str, Iterable[Route]]]) -> list[Route]:
    """The routes a prefix router reaches: each mount's routes under its prefix, once each."""
    seen: set[tuple[str, tuple[str, ...]]] = set()
    found = []
    for prefix, routes in mounts:
        for route in routes:
            key = (route.rule, route.methods)
            if under_prefix(route.rule, prefix) and key not in seen:
                seen.add(key)
                found.append(route)
    return found


def serve_document(routes: list[Route], title: str) -> Any:
    """An entry point (starlette Request -> Response) answering the document of ``routes`` plus itself."""
    from shared.web.request import request_id_of
    from shared.web.responses import json_response
    from shared.web.route import OPENAPI_PATH

    async def openapi_document(request: Any) -> Any:
        return json_response(doc, headers={"X-Request-ID": request_id_of(request.headers)})

    async def _self(call: Any) -> None:  # documented only; the entry point above answers
        return None

    own = Route(
        OPENAPI_PATH,
        ("GET",),
        _self,
        summary="The OpenAPI 3.1 document of every public route",
        responses={200: ("the OpenAPI document", {"type": "object"})},
    )
    doc = document([*routes, own], title)
    return openapi_document
