"""The append-only audit log (``audit_log``): who changed what, when, from what to what.

Every admin action writes one entry: the actor (API key id and name, never a secret), the time, the action
(``alias.move``, ``key.revoke``...), the target (``alias:iris/production``), the state before and after (JSON,
secrets dropped), the request id and the trace id. ``AuditLog.record(conn, ...)`` writes on the caller's
connection, inside the transaction of the change it describes: an action that rolls back leaves no entry,
and an entry that cannot be written rolls the action back. With ``conn=None`` it writes in a transaction of
its own (for decisions that change nothing else in PostgreSQL).

Invariant: this module only INSERTs into and SELECTs from ``audit_log``; no code path updates or deletes an
entry (a test holds every module to it). Retention is an operator's job (docs/operations.md).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, TypedDict

import sqlalchemy as sa

from shared import validation as v
from shared.clients.schema import audit_log
from shared.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.clients.db import Database

ACTION = re.compile(r"[a-z][a-z0-9_]{0,30}(\.[a-z][a-z0-9_]{0,30}){0,3}")
TARGET = re.compile(r"[a-z][a-z0-9_]{0,31}:.{1,400}", re.DOTALL)
MODEL_KINDS = ("model", "version", "alias", "rollout", "capture", "shadow")
SECRET_FIELDS = frozenset({"key", "key_hash", "secret", "callback_secret", "callback_salt", "password", "token"})
MAX_JSON_BYTES = 256 * 1024
MAX_LIMIT = 500


class Principal(Protocol):
    """What an authenticated caller is (``shared.access.auth.Principal`` fits)."""

    @property
    def key_id(self) -> str: ...

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Actor:
    """Who acts, and through which request: an API key (``Actor.of``) or the platform itself (``Actor.system``)."""

    key_id: str | None
    key_name: str
    request_id: str | None = None
    trace_id: str | None = None

    @classmethod
    def of(cls, principal: Principal | None, request_id: str | None = None, trace_id: str | None = None) -> Actor:
        """The caller's key; with AUTH_REQUIRED off (no principal) ``anonymous``."""
        if principal is None:
            return cls(None, "anonymous (authentication is off)", request_id, trace_id or None)
        return cls(principal.key_id, principal.name, request_id, trace_id or None)

    @classmethod
    def system(cls, component: str, request_id: str | None = None) -> Actor:
        """The platform deciding on its own (``Actor.system("rollout-gate")``)."""
        return cls(None, f"system:{component}", request_id)


class AuditEntry(TypedDict):
    """One entry of ``GET /v1/audit``."""

    id: str
    at: datetime
    actor_key_id: str | None
    actor_name: str
    action: str
    target: str
    model: str | None
    before: object
    after: object
    request_id: str | None
    trace_id: str | None


class AuditPage(TypedDict):
    """``GET /v1/audit``: newest first; ``next_cursor`` continues after the last entry (None: no more)."""

    entries: list[AuditEntry]
    total: int
    limit: int
    offset: int
    next_cursor: str | None


def target(kind: str, *parts: str) -> str:
    """``target("alias", "iris", "production")`` -> ``"alias:iris/production"``."""
    return f"{kind}:{'/'.join(parts)}"


def model_of(target_: str) -> str | None:
    """The model a target belongs to (its first part), for targets about models: ``alias:iris/prod`` -> iris."""
    kind, _, rest = target_.partition(":")
    return rest.split("/", 1)[0] or None if kind in MODEL_KINDS else None


def plain(value: object) -> object:
    """``value`` as plain JSON (times as ISO strings, ids as strings), with secret fields dropped."""
    try:
        text = json.dumps(value, default=_encode, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"an audit entry's before/after must be JSON-like: {exc}") from exc
    if len(text) > MAX_JSON_BYTES:
        return {"truncated": True, "bytes": len(text)}
    return _scrub(json.loads(text))


def _encode(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _scrub(value: object) -> object:
    if isinstance(value, dict):
        return {k: _scrub(item) for k, item in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


INTERNAL = Actor(None, "system:kinfer")  # a change made by Kinfer's own code (seeding, cleanup), not by a request


def append(
    conn: Connection,
    *,
    actor: Actor | None,
    action: str,
    target: str,
    before: object,
    after: object,
    request_id: str | None = None,
) -> None:
    """Insert one entry on ``conn``, in the caller's transaction (``actor`` None: ``INTERNAL``)."""
    if not ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} must look like 'alias.move'")
    if not TARGET.fullmatch(target):
        raise ValueError(f"audit target {target!r} must look like 'alias:iris/production'")
    actor = actor or INTERNAL
    conn.execute(
        audit_log.insert().values(
            actor_key_id=actor.key_id,
            actor_name=actor.key_name[:128],
            action=action,
            target=target,
            model=(model_of(target) or "")[:128] or None,
            before=plain(before),
            after=plain(after),
            request_id=(request_id or actor.request_id or "")[:128] or None,
            trace_id=(actor.trace_id or "")[:64] or None,
        )
    )


class AuditLog:
    """Writes and reads the audit log; ``record`` inside the caller's transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        conn: Connection | None,
        *,
        actor: Actor,
        action: str,
        target: str,
        before: object,
        after: object,
        request_id: str | None = None,
    ) -> None:
        """Append one entry; on ``conn`` (same transaction as the change), or in a transaction of its own."""
        if conn is not None:
            append(conn, actor=actor, action=action, target=target, before=before, after=after, request_id=request_id)
            return
        with self.db.begin() as own:
            append(own, actor=actor, action=action, target=target, before=before, after=after, request_id=request_id)

    def list_page(self, args: Mapping[str, str]) -> AuditPage:
        """``GET /v1/audit``: filters ``action`` (``alias`` matches every ``alias.*``), ``target``, ``model``,
        ``actor`` (key id), ``since``/``until`` (ISO 8601); ``limit`` (1-500), ``offset`` or ``cursor``."""
        limit = v.integer(args.get("limit"), "limit", default=50, lo=1, hi=MAX_LIMIT)
        offset = v.integer(args.get("offset"), "offset", default=0, lo=0, hi=1_000_000)
        where = _filters(args)
        cursor = args.get("cursor")
        page_where = [*where, audit_log.c.id < _cursor(cursor)] if cursor else where
        query = sa.select(audit_log).where(*page_where).order_by(audit_log.c.id.desc()).limit(limit).offset(offset)
        with self.db.read() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(*where)).scalar_one()
            rows = conn.execute(query).all()
        entries = [_entry(row) for row in rows]
        more = len(entries) == limit and bool(entries)
        return {
            "entries": entries,
            "total": total,
            "limit": limit,
            "offset": offset,
            "next_cursor": entries[-1]["id"] if more else None,
        }


def _filters(args: Mapping[str, str]) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if action := args.get("action"):
        if not ACTION.fullmatch(action):
            raise InvalidInput("action must look like 'alias.move' or 'alias'", field="action")
        where.append(
            audit_log.c.action == action
            if "." in action
            else audit_log.c.action.startswith(f"{action}.", autoescape=True)
        )
    for name, column in (("target", audit_log.c.target), ("model", audit_log.c.model)):
        if value := args.get(name):
            where.append(column == v.text(value[:512], name))
    if actor := args.get("actor"):
        where.append(audit_log.c.actor_key_id == _key_id(actor))
    for name, op in (("since", "ge"), ("until", "lt")):
        if raw := args.get(name):
            moment = _time(raw, name)
            where.append(audit_log.c.at >= moment if op == "ge" else audit_log.c.at < moment)
    return where


def _key_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidInput("actor must be an API key id (a UUID)", field="actor") from None


def _cursor(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidInput("cursor must be the next_cursor of a previous page", field="cursor")
    return int(raw)


def _time(raw: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO 8601 time such as 2026-12-01T00:00:00Z", field=field) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _entry(row: sa.Row[tuple[object, ...]]) -> AuditEntry:
    m = row._mapping
    return {
        "id": str(m["id"]),
        "at": m["at"],
        "actor_key_id": m["actor_key_id"],
        "actor_name": m["actor_name"],
        "action": m["action"],
        "target": m["target"],
        "model": m["model"],
        "before": m["before"],
        "after": m["after"],
        "request_id": m["request_id"],
        "trace_id": m["trace_id"],
    }
