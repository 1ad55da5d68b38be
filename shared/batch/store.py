"""Batch job state in PostgreSQL: ``batch_jobs`` and ``batch_chunks``.

A chunk is recorded once: ``record_chunk`` flips its row from ``processing`` to
``done``/``dead`` and advances the job counters in the same transaction, so a
redelivered chunk counts once. Counters only move while the job is active; the
transaction that makes ``chunks_done == chunks_total`` is the one that finalizes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict, cast

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from shared.clients.db import contains
from shared.clients.schema import batch_chunks, batch_jobs
from shared.domain import JobError, JobStatus
from shared.errors import NotFound

ACTIVE = (JobStatus.PENDING, JobStatus.PROCESSING)
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
STATUSES = ACTIVE + FINISHED
ERROR_SAMPLE = 10


class NewJob(TypedDict):
    """The values ``insert_job`` writes (the other ``batch_jobs`` columns take their defaults)."""

    id: uuid.UUID
    owner: str
    model_name: str
    model_version: str
    model_id: uuid.UUID
    status: str
    total: int
    chunk_size: int
    chunks_total: int
    input_url: str | None
    intake_key: str | None


class JobRow(TypedDict):
    """A ``batch_jobs`` row as the store reads it."""

    id: uuid.UUID
    owner: str
    model_name: str
    model_version: str
    model_id: uuid.UUID
    status: str
    total: int
    completed: int
    succeeded: int
    failed: int
    chunk_size: int
    chunks_total: int
    chunks_done: int
    errors: list[JobError]
    error: str | None
    result_key: str | None
    input_url: str | None
    intake_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobProgress(TypedDict):
    """The counters of a job as recording a chunk left them (``record_chunk``)."""

    id: uuid.UUID
    status: str
    chunks_done: int
    chunks_total: int
    total: int
    completed: int
    succeeded: int
    failed: int


def _job(row: sa.Row[tuple[object, ...]]) -> JobRow:
    return cast(JobRow, dict(row._mapping))


@dataclass(frozen=True)
class ChunkCounts:
    """What one chunk contributed: processed = succeeded + failed; ``errors`` a short sample."""

    succeeded: int
    failed: int
    errors: list[JobError]

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


def parse_job_id(raw: object) -> uuid.UUID:
    """The job id as a UUID; NotFound (404) for a malformed one."""
    try:
        return uuid.UUID(str(raw))
    except (ValueError, TypeError):
        raise NotFound(f"batch job {str(raw)[:64]!r} not found") from None


def insert_job(conn: Connection, row: NewJob) -> JobRow | None:
    """Insert a job; None when its ``intake_key`` already names another job."""
    stmt = pg_insert(batch_jobs).values(**row).on_conflict_do_nothing(index_elements=["intake_key"])
    created = conn.execute(stmt.returning(*batch_jobs.c)).first()
    return _job(created) if created is not None else None


def job_by_intake_key(conn: Connection, key: str) -> JobRow | None:
    row = conn.execute(sa.select(batch_jobs).where(batch_jobs.c.intake_key == key)).first()
    return _job(row) if row is not None else None


def get_job(conn: Connection, job_id: uuid.UUID, owner: str | None = None, *, lock: bool = False) -> JobRow:
    """The job row (only ``owner``'s when given); NotFound otherwise."""
    query = sa.select(batch_jobs).where(batch_jobs.c.id == job_id)
    if owner is not None:
        query = query.where(batch_jobs.c.owner == owner)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"batch job {job_id} not found")
    return _job(row)


def job_status(conn: Connection, job_id: uuid.UUID) -> str | None:
    return conn.execute(sa.select(batch_jobs.c.status).where(batch_jobs.c.id == job_id)).scalar()


def list_jobs(
    conn: Connection, owner: str, status: str | None, limit: int, offset: int, model_part: str | None = None
) -> tuple[int, list[JobRow]]:
    """A page of ``owner``'s jobs, newest first; ``model_part``: a part of the model's name, any case."""
    query = sa.select(batch_jobs).where(batch_jobs.c.owner == owner)
    if status:
        query = query.where(batch_jobs.c.status == status)
    if model_part:
        query = query.where(contains(batch_jobs.c.model_name, model_part))
    total = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = conn.execute(
        query.order_by(batch_jobs.c.created_at.desc(), batch_jobs.c.id.desc()).limit(limit).offset(offset)
    ).all()
    return total, [_job(r) for r in rows]


def set_finished(
    conn: Connection,
    job_id: uuid.UUID,
    status: str,
    *,
    only_active: bool = True,
    error: str | None = None,
    result_key: str | None = None,
) -> JobRow | None:
    """Move a job to a finished status; None when it was not active (``only_active``)."""
    values: dict[str, object] = {
        "status": status,
        "finished_at": sa.func.clock_timestamp(),
        "updated_at": sa.func.clock_timestamp(),
    }
    if error is not None:
        values["error"] = error
        values["errors"] = sa.cast(json.dumps([{"error": error}]), JSONB)
    if result_key is not None:
        values["result_key"] = result_key
    stmt = sa.update(batch_jobs).where(batch_jobs.c.id == job_id)
    if only_active:
        stmt = stmt.where(batch_jobs.c.status.in_(ACTIVE))
    row = conn.execute(stmt.values(**values).returning(*batch_jobs.c)).first()
    return _job(row) if row is not None else None


def set_result_key(conn: Connection, job_id: uuid.UUID, key: str) -> None:
    conn.execute(sa.update(batch_jobs).where(batch_jobs.c.id == job_id).values(result_key=key))


def clear_intake_key(conn: Connection, job_id: uuid.UUID) -> None:
    conn.execute(sa.update(batch_jobs).where(batch_jobs.c.id == job_id).values(intake_key=None))


_CLAIM = sa.text("""
WITH job AS (
  SELECT * FROM batch_jobs WHERE id = :job_id
), claimed AS (
  INSERT INTO batch_chunks (job_id, chunk, status, attempts)
  SELECT id, :chunk, 'processing', 1 FROM job
  WHERE status IN ('pending', 'processing') AND :chunk >= 0 AND :chunk < chunks_total
    AND CAST(:chunk AS bigint) * chunk_size < total
  ON CONFLICT (job_id, chunk) DO UPDATE SET attempts = batch_chunks.attempts + 1, updated_at = clock_timestamp()
  WHERE batch_chunks.status = 'processing'
  RETURNING attempts
), marked AS (
  UPDATE batch_jobs SET
    status = 'processing',
    started_at = COALESCE(started_at, clock_timestamp()),
    updated_at = clock_timestamp()
  WHERE id = :job_id AND status IN ('pending', 'processing') AND EXISTS (SELECT 1 FROM claimed)
)
SELECT job.*, (SELECT attempts FROM claimed) AS attempts FROM job
""").columns(*batch_jobs.c, sa.column("attempts", sa.Integer))


def claim_chunk(conn: Connection, job_id: uuid.UUID, chunk: int) -> tuple[JobRow, int | None] | None:
    """A worker's claim in one statement: the job row as it was, and the attempt number when this chunk was
    claimed now (its ``batch_chunks`` row inserted, or its attempts counted again while it is still
    ``processing``); the job then becomes ``processing`` and every claim is progress (``updated_at``), so a
    job whose chunks are being retried is never taken for stalled. The attempt is None when the job is not
    active, has no such chunk (the layout ``ChunkRef.of_job`` reads), or the chunk is already recorded.
    None when there is no such job."""
    row = conn.execute(_CLAIM, {"job_id": job_id, "chunk": chunk}).first()
    if row is None:
        return None
    found = dict(row._mapping)
    attempts = found.pop("attempts")
    return cast(JobRow, found), attempts


def record_chunk(
    conn: Connection, job_id: uuid.UUID, chunk: int, status: str, counts: ChunkCounts
) -> JobProgress | None:
    """Record a chunk once and advance the job; the updated job, or None (duplicate or job not active).

    The caller rolls back on None so that a chunk of a cancelled job stays unrecorded. One statement: the
    chunk row is marked and the job advanced only when the mark took.
    """
    row = conn.execute(
        _RECORD,
        {
            "chunk": chunk,
            "status": status,
            "processed": counts.processed,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "sample": ERROR_SAMPLE,
            "new_errors": json.dumps(counts.errors[:ERROR_SAMPLE]),
            "job_id": job_id,
        },
    ).first()
    return cast(JobProgress, dict(row._mapping)) if row is not None else None


_RECORD = sa.text("""
WITH marked AS (
  INSERT INTO batch_chunks (job_id, chunk, status, attempts, processed, succeeded, failed)
  VALUES (:job_id, :chunk, :status, 1, :processed, :succeeded, :failed)
  ON CONFLICT (job_id, chunk) DO UPDATE SET
    status = EXCLUDED.status,
    processed = EXCLUDED.processed,
    succeeded = EXCLUDED.succeeded,
    failed = EXCLUDED.failed,
    updated_at = clock_timestamp()
  WHERE batch_chunks.status = 'processing'
  RETURNING chunk
)
UPDATE batch_jobs SET
  completed = completed + :processed,
  succeeded = succeeded + :succeeded,
  failed = failed + :failed,
  chunks_done = chunks_done + 1,
  status = 'processing',
  started_at = COALESCE(started_at, clock_timestamp()),
  updated_at = clock_timestamp(),
  errors = CASE WHEN jsonb_array_length(errors) >= :sample THEN errors ELSE (
    SELECT COALESCE(jsonb_agg(e ORDER BY n), '[]'::jsonb) FROM (
      SELECT e, n FROM jsonb_array_elements(errors || CAST(:new_errors AS jsonb)) WITH ORDINALITY AS t(e, n)
      ORDER BY n LIMIT :sample) AS s) END
WHERE id = :job_id AND status IN ('pending', 'processing') AND EXISTS (SELECT 1 FROM marked)
RETURNING id, status, chunks_done, chunks_total, total, completed, succeeded, failed
""")


def fail_stalled(conn: Connection, stall_s: int, job_ids: list[uuid.UUID] | None = None) -> list[JobRow]:
    """Fail the active jobs (of ``job_ids``, or all) with no progress for ``stall_s`` seconds; the failed rows."""
    reason = sa.func.concat(
        f"no progress for {stall_s} s: its remaining chunks stopped being delivered (",
        batch_jobs.c.chunks_done,
        " of ",
        batch_jobs.c.chunks_total,
        " chunks finished); submit it again",
    )
    stalled = sa.and_(
        batch_jobs.c.status.in_(ACTIVE),
        batch_jobs.c.updated_at < sa.func.clock_timestamp() - sa.func.make_interval(0, 0, 0, 0, 0, 0, stall_s),
    )
    stmt = sa.update(batch_jobs).where(stalled)
    if job_ids is not None:
        stmt = stmt.where(batch_jobs.c.id.in_(job_ids))
    stmt = stmt.values(
        status=JobStatus.FAILED,
        error=reason,
        finished_at=sa.func.clock_timestamp(),
        updated_at=sa.func.clock_timestamp(),
        errors=sa.func.jsonb_build_array(sa.func.jsonb_build_object("error", reason)),
    )
    return [_job(r) for r in conn.execute(stmt.returning(*batch_jobs.c)).all()]


def active_load(conn: Connection, owner: str, *, lock: bool = False) -> tuple[int, int]:
    """(jobs, items) ``owner`` has pending or processing. ``lock``: hold a per-owner lock until the
    transaction ends, so two submits of one key cannot both pass its bounds (check and insert in one
    transaction)."""
    if lock:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.literal("batch_jobs:" + owner)))))
    jobs, items = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(batch_jobs.c.total), 0)).where(
            batch_jobs.c.owner == owner, batch_jobs.c.status.in_(ACTIVE)
        )
    ).one()
    return int(jobs), int(items)


def active_jobs(conn: Connection) -> list[JobRow]:
    rows = conn.execute(sa.select(batch_jobs).where(batch_jobs.c.status.in_(ACTIVE))).all()
    return [_job(r) for r in rows]


def done_chunks(conn: Connection, job_id: uuid.UUID) -> list[int]:
    """The chunk numbers recorded (done or dead), in order."""
    rows = conn.execute(
        sa.select(batch_chunks.c.chunk)
        .where(batch_chunks.c.job_id == job_id, batch_chunks.c.status.in_(("done", "dead")))
        .order_by(batch_chunks.c.chunk)
    ).all()
    return [r.chunk for r in rows]
