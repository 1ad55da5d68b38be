"""The audit log over HTTP: who a request acts as (``actor_of``), and ``GET /v1/audit`` (admin scope only).

The log is append-only (``shared.audit``): this is its only route, and it reads. No method changes or
deletes an entry (a PUT, PATCH or DELETE on /v1/audit answers 405).
"""

from __future__ import annotations

from collections.abc import Callable

from shared.audit import MAX_LIMIT, Actor, AuditLog, AuditPage
from shared.web.request import Call
from shared.web.route import QueryParam, Route
from shared.web.schemas import Schema


def actor_of(call: Call) -> Actor:
    """The caller's key (``anonymous`` with AUTH_REQUIRED off), with the request and trace ids."""
    return Actor.of(call.principal, call.request_id, call.trace_id)


_TIME = {"type": "string", "format": "date-time"}
_NULLABLE = {"type": ["string", "null"]}

AUDIT_FILTERS = (
    QueryParam("action", {"type": "string", "maxLength": 128}, "alias.move, or alias for every alias.* action"),
    QueryParam("target", {"type": "string", "maxLength": 512}, "exact target: alias:iris/production, key:<id>"),
    QueryParam("model", {"type": "string", "maxLength": 128}, "entries about this model's versions and aliases"),
    QueryParam("actor", {"type": "string", "format": "uuid"}, "the id of the API key that acted"),
    QueryParam("since", _TIME, "entries at or after this time (ISO 8601)"),
    QueryParam("until", _TIME, "entries before this time (ISO 8601)"),
    QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}, "page size"),
    QueryParam("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0}, "skip"),
    QueryParam("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "next_cursor of the previous page"),
)

AUDIT_ENTRY: Schema = {
    "type": "object",
    "required": ["id", "at", "actor_name", "action", "target", "before", "after"],
    "properties": {
        "id": {"type": "string"},
        "at": _TIME,
        "actor_key_id": _NULLABLE,
        "actor_name": {"type": "string", "description": "the key's name, or system:<component>"},
        "action": {"type": "string"},
        "target": {"type": "string"},
        "model": _NULLABLE,
        "before": {"description": "the target before the action (JSON; null when it did not exist)"},
        "after": {"description": "the target after the action (JSON; null when it was deleted)"},
        "request_id": _NULLABLE,
        "trace_id": _NULLABLE,
    },
}

AUDIT_PAGE: Schema = {
    "type": "object",
    "required": ["entries", "total", "limit", "offset", "next_cursor"],
    "properties": {
        "entries": {"type": "array", "items": AUDIT_ENTRY},
        "total": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
        "next_cursor": _NULLABLE,
    },
}


def audit_route(log: Callable[[], AuditLog]) -> Route:
    """``GET /v1/audit`` on the audit log that ``log()`` returns (built by the function's composition root)."""

    def list_entries(call: Call) -> AuditPage:
        return log().list_page(call.args)

    return Route(
        "/v1/audit",
        ("GET",),
        list_entries,
        scope="admin",
        query=AUDIT_FILTERS,
        summary="The audit log, newest first: every admin action, with who, when, before and after",
        responses={200: ("a page of audit entries", AUDIT_PAGE)},
    )
