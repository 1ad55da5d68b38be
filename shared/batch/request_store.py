"""Async inference requests in PostgreSQL: ``infer_requests`` (``shared.batch.requests`` owns the rules).

Every write that ends a request or its callback is conditional on the state it leaves, so a redelivered
event (or two deliveries racing) changes a row once: a request is recorded ``succeeded`` or ``failed``
once, a callback ``delivered`` or ``failed`` once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shared.clients.schema import infer_requests as t
from shared.domain import JSONObject

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
FINAL = (SUCCEEDED, FAILED)
# callback_status: pending (its event not yet sent), queued (sent), delivered, failed
CB_PENDING, CB_QUEUED, CB_DELIVERED, CB_FAILED = "pending", "queued", "delivered", "failed"
PURGE_BATCH = 100


class NewRequest(TypedDict):
    """The values ``insert`` writes."""

    id: uuid.UUID
    owner: str
    protocol: str
    model_name: str
    model_version: str
    route_key: str | None
    body: bytes
    request_id: str
    trace_id: str
    callback_url: str | None
    callback_status: str | None


class RequestRow(TypedDict):
    """An ``infer_requests`` row as the store reads it."""

    id: uuid.UUID
    owner: str
    protocol: str
    model_name: str
    model_version: str
    route_key: str | None
    body: bytes
    status: str
    attempts: int
    http_status: int | None
    result: JSONObject | None
    error: JSONObject | None
    request_id: str
    trace_id: str
    callback_url: str | None
    callback_status: str | None
    callback_attempts: int
    callback_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    callback_at: datetime | None
    expires_at: datetime
    expired: bool


def _columns() -> list[sa.ColumnElement[object]]:
    return [*t.c, (t.c.expires_at <= sa.func.now()).label("expired")]


def _row(found: sa.Row[*tuple[Any, ...]] | None) -> RequestRow | None:
    if found is None:
        return None
    row = dict(found._mapping)
    row["body"] = bytes(cast(bytes, row["body"]))
    return cast(RequestRow, row)


def _expiry(retention_s: int) -> sa.ColumnElement[datetime]:
    return sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, retention_s)


def active_of(conn: Connection, owner: str) -> int:
    """How many of ``owner``'s requests are queued or running; holds a per-owner lock until the transaction
    ends, so two accepts of one key cannot both pass its bound."""
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.literal("infer_requests:" + owner)))))
    count = conn.execute(
        sa.select(sa.func.count()).select_from(t).where(t.c.owner == owner, t.c.status.in_((QUEUED, RUNNING)))
    ).scalar_one()
    return int(count)


def insert(conn: Connection, values: NewRequest, retention_s: int) -> RequestRow:
    stmt = sa.insert(t).values(**values, expires_at=_expiry(retention_s)).returning(*_columns())
    row = _row(conn.execute(stmt).one())
    assert row is not None
    return row


def get(conn: Connection, request_id: uuid.UUID, owner: str | None = None) -> RequestRow | None:
    """The row (None when absent, or not ``owner``'s: callers cannot tell the two apart)."""
    stmt = sa.select(*_columns()).where(t.c.id == request_id)
    if owner is not None:
        stmt = stmt.where(t.c.owner == owner)
    return _row(conn.execute(stmt).one_or_none())


def with_prefix(conn: Connection, prefix: str, owner: str, limit: int) -> list[RequestRow]:
    """``owner``'s live requests whose id starts with ``prefix`` (LIKE, its wildcards escaped), newest first."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    stmt = (
        sa.select(*_columns())
        .where(
            t.c.owner == owner,
            t.c.expires_at > sa.func.now(),
            sa.cast(t.c.id, sa.Text).like(f"{escaped}%", escape="\\"),
        )
        .order_by(t.c.created_at.desc())
        .limit(limit)
    )
    return [row for row in (_row(found) for found in conn.execute(stmt).all()) if row is not None]


def delete(conn: Connection, request_id: uuid.UUID) -> None:
    conn.execute(sa.delete(t).where(t.c.id == request_id))


def purge_expired(conn: Connection, limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` requests past their ``expires_at``; how many."""
    doomed = sa.select(t.c.id).where(t.c.expires_at <= sa.func.now()).limit(limit).scalar_subquery()
    return conn.execute(sa.delete(t).where(t.c.id.in_(doomed))).rowcount or 0


def start(conn: Connection, request_id: uuid.UUID) -> RequestRow | None:
    """Mark a queued or running request running (one more attempt); None when it is final or gone."""
    stmt = (
        sa.update(t)
        .where(t.c.id == request_id, t.c.status.in_((QUEUED, RUNNING)))
        .values(status=RUNNING, attempts=t.c.attempts + 1, started_at=sa.func.coalesce(t.c.started_at, sa.func.now()))
        .returning(*_columns())
    )
    return _row(conn.execute(stmt).one_or_none())


def requeue(conn: Connection, request_id: uuid.UUID) -> None:
    """Back to ``queued`` after a retryable failure (its event is redelivered)."""
    conn.execute(sa.update(t).where(t.c.id == request_id, t.c.status == RUNNING).values(status=QUEUED))


def finish(
    conn: Connection,
    request_id: uuid.UUID,
    status: str,
    http_status: int,
    body: JSONObject,
    retention_s: int,
) -> RequestRow | None:
    """Record the outcome once (``result`` when succeeded, ``error`` when failed); None when already final."""
    values: dict[str, object] = {
        "status": status,
        "http_status": http_status,
        "result" if status == SUCCEEDED else "error": body,
        "finished_at": sa.func.now(),
        "expires_at": _expiry(retention_s),
        "body": b"",  # the input is not needed any more
    }
    stmt = sa.update(t).where(t.c.id == request_id, t.c.status.notin_(FINAL)).values(**values).returning(*_columns())
    return _row(conn.execute(stmt).one_or_none())


def set_callback(
    conn: Connection, request_id: uuid.UUID, status: str, *, only_from: tuple[str, ...], error: str | None = None
) -> bool:
    """Move the callback to ``status`` when it is in one of ``only_from``; whether it moved."""
    values: dict[str, object] = {"callback_status": status}
    if status in (CB_DELIVERED, CB_FAILED):
        values["callback_at"] = sa.func.now()
    if error is not None:
        values["callback_error"] = error
    stmt = sa.update(t).where(t.c.id == request_id, t.c.callback_status.in_(only_from)).values(**values)
    return bool(conn.execute(stmt).rowcount)


def callback_attempted(conn: Connection, request_id: uuid.UUID, error: str | None) -> None:
    """Count one delivery attempt (and its error, if it failed)."""
    conn.execute(
        sa.update(t)
        .where(t.c.id == request_id)
        .values(callback_attempts=t.c.callback_attempts + 1, callback_error=error)
    )
