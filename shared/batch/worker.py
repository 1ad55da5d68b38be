"""Batch chunk processing (the ``batch_worker`` function) and dead-lettered chunks (``batch_deadletter``).

A chunk event names a job and a chunk number; everything else (the input object, its first index and item
count, the model, the owner) is read from the job row, which the authenticated API wrote: an event that
says otherwise (forged, or stale) is logged and its own values ignored, and an event about an unknown job or
a chunk the job does not have is acked (200) and logged, creating no work. The worker claims an attempt (one
statement: ``store.claim_chunk``), reads the chunk input (one S3 read), infers the chunk in sub-batches (checking
between them, at most every ``CANCEL_CHECK_S``, that the job was not cancelled), writes the chunk results (one S3
write), then records the chunk and advances the job counters (one statement: ``store.record_chunk``). The
transaction that records the last chunk merges the results object and finishes the job. Redelivery is harmless: a
recorded chunk is skipped.

A chunk whose every line is one row of a single-input batched model takes the vectorised path
(``shared.batch.vector``: one parse, arrays to Triton, answers encoded per array); any other chunk the per-item
path, which reports each bad line on its own. Both write the same bytes for the same answers.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import orjson

from shared import telemetry
from shared.batch import results, store
from shared.batch.results import ChunkLines, ResultRow
from shared.batch.store import JobProgress, JobRow
from shared.batch.vector import ChunkInference
from shared.clients import storage
from shared.domain import JobStatus
from shared.errors import InvalidInput, NotFound, Unprocessable
from shared.validation import has_duplicate_keys

if TYPE_CHECKING:
    from cloudevents.http import CloudEvent
    from sqlalchemy.engine import Connection

    from shared.batch.results import BatchResults
    from shared.batch.vector import Prepared
    from shared.clients.db import Database
    from shared.domain import ModelVersion
    from shared.inference.items import ItemResult, ItemRunner
    from shared.registry import ModelRegistry
    from shared.settings import Settings

log = logging.getLogger(__name__)

SUB_BATCH = 512  # items inferred at once (several Triton requests in flight); cancellation is checked between
VECTOR_SUB_BATCH = 4096  # the same on the vectorised path (rows in arrays: a bigger step keeps Triton busy)
CANCEL_CHECK_S = 0.5  # ... at most this often: a cancel stops a chunk within about this much inference
MAX_ERROR_LEN = 500


class ChunkAnswer(TypedDict):
    """What the worker (and the dead-letter function) answer for one chunk event."""

    job_id: NotRequired[str]
    chunk: NotRequired[int]
    succeeded: NotRequired[int]
    failed: NotRequired[int]
    job_status: NotRequired[str]
    skipped: NotRequired[str]
    ignored: NotRequired[str]


@dataclass(frozen=True)
class ChunkRef:
    """What a chunk event points at."""

    job_id: uuid.UUID
    chunk: int
    start: int
    count: int
    bucket: str
    key: str

    @classmethod
    def from_event(cls, event: CloudEvent) -> ChunkRef:
        """Parse the event data; InvalidInput (400, not retried) when it is not a chunk event."""
        data = event.data
        if not isinstance(data, dict):
            raise InvalidInput("chunk event data must be a JSON object")
        try:
            ref = cls(
                job_id=uuid.UUID(str(data["job_id"])),
                chunk=int(data["chunk"]),
                start=int(data["start"]),
                count=int(data["count"]),
                bucket=str(data["bucket"]),
                key=str(data["key"]),
            )
        except (KeyError, ValueError, TypeError):
            raise InvalidInput("chunk event data needs job_id (uuid), chunk, start, count, bucket and key") from None
        if ref.chunk < 0 or ref.start < 0 or ref.count < 1:
            raise InvalidInput("chunk event data has a negative chunk/start or an empty count")
        return ref

    @classmethod
    def of_job(cls, job: JobRow, chunk: int, input_bucket: str) -> ChunkRef | None:
        """Chunk ``chunk`` of ``job`` as the job row lays it out (``BatchJobs`` wrote it so); None when the job
        has no such chunk."""
        if not 0 <= chunk < job["chunks_total"]:
            return None
        start = chunk * job["chunk_size"]
        count = min(job["chunk_size"], job["total"] - start)
        if count < 1:
            return None
        return cls(job["id"], chunk, start, count, input_bucket, results.input_key(job["id"], chunk))


class _NotRecorded(Exception):
    """Raised inside the recording transaction to roll it back (duplicate, or job no longer active)."""


def _parse(lines: list[bytes]) -> tuple[list[object | None], int]:
    """Parsed items (None where a line is not a strict JSON object) and how many were bad.

    All lines are parsed as one JSON array and checked for repeated keys at once (C-speed
    passes); only when that fails is each line looked at on its own.
    """
    joined = b"[" + b",".join(lines) + b"]"
    try:
        items: list[object | None] = orjson.loads(joined)
    except orjson.JSONDecodeError:
        items = [_strict(line) for line in lines]
    else:
        if len(items) != len(lines) or has_duplicate_keys(joined, items):  # a line held several values
            items = [_strict(line) for line in lines]
    items = [item if isinstance(item, dict) else None for item in items]
    return items, sum(1 for i in items if i is None)


def _strict(line: bytes) -> object | None:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return None if isinstance(item, dict | list) and has_duplicate_keys(line, item) else item


def _row(index: int, result: ItemResult | None, line: bytes) -> ResultRow:
    if result is None:
        reason = (
            "the input is not valid JSON"
            if not _is_json(line)
            else 'each input must be a JSON object like {"data": [...]} or {"<tensor>": [...]}'
        )
        return {"index": index, "error": reason}
    if result.error is not None:
        return {"index": index, "error": str(result.error)[:MAX_ERROR_LEN]}
    row: ResultRow = {"index": index, "prediction": result.prediction}
    if result.outputs is not None:
        row["outputs"] = result.outputs
    return row


def _is_json(line: bytes) -> bool:
    return _strict(line) is not None


# What the last status of a dead-lettered delivery means, in our words. The event's ``knativeerrordata``
# (the last response body) is never copied into a tenant's results or request: whoever can send to the
# dead-letter function would write their own text into another tenant's answers.
DEAD_STATUS_MEANING = {
    "429": "the worker was busy",
    "500": "the worker failed",
    "502": "the backend failed",
    "503": "the backend or a store was unavailable",
    "504": "the backend did not answer in time",
}


def dead_reason(event: CloudEvent, what: str = "chunk") -> str:
    """A sentence from the ``knativeerrorcode`` extension: only the status (an HTTP status) and what it
    means, never the delivered body."""
    code = str(event.get("knativeerrorcode") or "")
    code = code if code.isascii() and code.isdigit() and len(code) == 3 else ""
    reason = f"{what} delivery failed after all retries" + (f" (last status {code})" if code else " (no response)")
    meaning = DEAD_STATUS_MEANING.get(code)
    return f"{reason}: {meaning}" if meaning else reason


class BatchWorker:
    """Owns chunk processing: claim, infer, record and finalize a chunk, and dead-lettered chunks."""

    def __init__(
        self,
        db: Database,
        s3: Any,
        registry: ModelRegistry,
        results: BatchResults,
        items: ItemRunner,
        settings: Settings,
    ) -> None:
        self.db = db
        self.s3 = s3
        self.registry = registry
        self.results = results
        self.items = items
        self.settings = settings
        self.vector = ChunkInference.over(items, MAX_ERROR_LEN)

    # -- worker ---------------------------------------------------------------------
    def process_chunk(self, event: CloudEvent) -> tuple[int, ChunkAnswer]:
        """Infer one chunk; (status, body). Retryable failures raise (-> 503/504)."""
        ref = ChunkRef.from_event(event)
        metrics = telemetry.metrics()
        metrics.queue_age(event.get("time"))
        try:
            return self._process(ref)
        except Exception:
            metrics.batch_chunks.labels("error").inc()
            raise

    def _process(self, event_ref: ChunkRef) -> tuple[int, ChunkAnswer]:
        claimed = self._claim(event_ref)
        if isinstance(claimed, str):
            return 200, {"job_id": str(event_ref.job_id), "chunk": event_ref.chunk, "skipped": claimed}
        job, ref = claimed
        try:
            model = self.registry.get_model(str(job["model_id"]))
        except NotFound:
            raise Unprocessable(f"the model of batch job {ref.job_id} no longer exists") from None
        lines = self._chunk_lines(ref)
        prepared = self.vector.prepare(model, lines) if self.vector is not None else None
        answered = self._infer(model, ref, lines) if prepared is None else self._infer_vector(prepared, ref)
        if answered is None:
            return 200, {"job_id": str(ref.job_id), "chunk": ref.chunk, "skipped": "job cancelled"}
        return self._store(ref, answered, "done")

    def _claim(self, event_ref: ChunkRef) -> tuple[JobRow, ChunkRef] | str:
        """The job row and its chunk when this chunk should be processed now; else the reason to skip it.
        One statement reads the job, claims an attempt on the chunk and marks the job processing."""
        with self.db.begin() as conn:
            claimed = store.claim_chunk(conn, event_ref.job_id, event_ref.chunk)
        if claimed is None:
            return self._unknown(event_ref)
        job, attempt = claimed
        found = self._chunk_of(job, event_ref)
        if isinstance(found, str):
            return found
        if job["status"] not in store.ACTIVE:
            return f"job {job['status']}"
        if attempt is None:
            return "chunk already recorded"
        return job, found

    def _job_chunk(self, conn: Connection, event_ref: ChunkRef) -> tuple[JobRow, ChunkRef] | str:
        """The job an event names and its chunk as the job row lays it out; a reason (logged) when there is
        none. The event's own bucket, key, start and count are never used."""
        try:
            job = store.get_job(conn, event_ref.job_id)
        except NotFound:
            return self._unknown(event_ref)
        found = self._chunk_of(job, event_ref)
        return found if isinstance(found, str) else (job, found)

    @staticmethod
    def _unknown(event_ref: ChunkRef) -> str:
        log.warning("chunk event ignored: batch job %s is unknown", event_ref.job_id)
        return "unknown batch job"

    def _chunk_of(self, job: JobRow, event_ref: ChunkRef) -> ChunkRef | str:
        """The chunk an event names as the job row lays it out; a reason (logged) when the job has none."""
        ref = ChunkRef.of_job(job, event_ref.chunk, self.settings.s3_input_bucket)
        if ref is None:
            log.warning("chunk event ignored: batch job %s has no chunk %d", event_ref.job_id, event_ref.chunk)
            return "the job has no such chunk"
        if ref != event_ref:
            log.warning(
                "chunk event for batch job %s chunk %d disagrees with the job row (start/count/object): the row's "
                "values are used",
                ref.job_id,
                ref.chunk,
            )
        return ref

    def _chunk_lines(self, ref: ChunkRef) -> list[bytes]:
        try:
            data = storage.get_bytes(self.s3, ref.bucket, ref.key)
        except NotFound:
            raise Unprocessable(f"chunk input s3://{ref.bucket}/{ref.key} is missing") from None
        lines = [line for line in data.split(b"\n") if line.strip()]
        if len(lines) != ref.count:
            raise Unprocessable(f"chunk input holds {len(lines)} item(s); the event says {ref.count}")
        return lines

    def _infer_vector(self, prepared: Prepared, ref: ChunkRef) -> ChunkLines | None:
        """The vectorised path (``shared.batch.vector``): the chunk's rows in sub-batches of VECTOR_SUB_BATCH;
        None when the job was cancelled meanwhile."""
        assert self.vector is not None
        parts: list[ChunkLines] = []
        checked = time.monotonic()  # the claim just saw the job active
        for offset in range(0, ref.count, VECTOR_SUB_BATCH):
            if offset and time.monotonic() - checked >= CANCEL_CHECK_S:
                if not self._still_active(ref.job_id):
                    return None
                checked = time.monotonic()
            stop = min(offset + VECTOR_SUB_BATCH, ref.count)
            parts.append(self.vector.infer(prepared, offset, stop, ref.start + offset))
        return ChunkLines.joined(parts, store.ERROR_SAMPLE)

    def _infer(self, model: ModelVersion, ref: ChunkRef, lines: list[bytes]) -> ChunkLines | None:
        """One result row per line, in order (the per-item path); None when the job was cancelled meanwhile."""
        rows: list[ResultRow] = []
        checked = time.monotonic()  # the claim just saw the job active
        for offset in range(0, len(lines), SUB_BATCH):
            if offset and time.monotonic() - checked >= CANCEL_CHECK_S:
                if not self._still_active(ref.job_id):
                    return None
                checked = time.monotonic()
            part = lines[offset : offset + SUB_BATCH]
            items, bad = _parse(part)
            inferred = iter(
                self.items.infer_items(model, [i for i in items if i is not None]) if bad < len(part) else []
            )
            for position, item in enumerate(items):
                index = ref.start + offset + position
                rows.append(_row(index, next(inferred) if item is not None else None, part[position]))
        return ChunkLines.of_rows(rows, store.ERROR_SAMPLE)

    def _still_active(self, job_id: uuid.UUID) -> bool:
        with self.db.begin() as conn:
            return store.job_status(conn, job_id) in store.ACTIVE

    # -- recording and finalization -------------------------------------------------
    def _store(self, ref: ChunkRef, answered: ChunkLines, status: str) -> tuple[int, ChunkAnswer]:
        """Write the chunk results, then record the chunk once; the last one finalizes the job."""
        self.results.put_lines(
            self.settings.s3_results_bucket, results.chunk_result_key(ref.job_id, ref.chunk), answered.data
        )
        counts = store.ChunkCounts(succeeded=answered.succeeded, failed=answered.failed, errors=answered.errors)
        body: ChunkAnswer = {
            "job_id": str(ref.job_id),
            "chunk": ref.chunk,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
        }
        try:
            with self.db.begin() as conn:
                job = store.record_chunk(conn, ref.job_id, ref.chunk, status, counts)
                if job is None:
                    raise _NotRecorded
                if job["chunks_done"] >= job["chunks_total"]:
                    body["job_status"] = self._finalize(conn, job)
        except _NotRecorded:
            telemetry.metrics().batch_chunks.labels("skipped").inc()
            return 200, {**body, "skipped": "chunk already recorded or job no longer active"}
        metrics = telemetry.metrics()
        metrics.batch_chunks.labels(status).inc()
        metrics.batch_items.labels("succeeded").inc(counts.succeeded)
        metrics.batch_items.labels("failed").inc(counts.failed)
        return 200, body

    def _finalize(self, conn: Connection, job: JobProgress) -> str:
        """Merge every chunk's results and finish the job (inside the recording transaction).

        Chunk results that are gone (object storage lost them) fail the job with the reason: redelivery
        could never bring them back, and the job must not stay ``processing``.
        """
        try:
            key = self.results.merge_chunks(job["id"], range(job["chunks_total"]))
        except NotFound as exc:
            reason = f"the results of some chunks are gone ({exc.message}); submit the job again"
            store.set_finished(conn, job["id"], JobStatus.FAILED, error=reason)
            log.error("batch job %s failed: %s", job["id"], reason)
            return JobStatus.FAILED
        status = JobStatus.FAILED if job["succeeded"] == 0 else JobStatus.COMPLETED
        store.set_finished(conn, job["id"], status, result_key=key)
        log.info("batch job %s %s: %d succeeded, %d failed", job["id"], status, job["succeeded"], job["failed"])
        return status

    # -- dead letter ----------------------------------------------------------------
    def fail_chunk(self, event: CloudEvent) -> tuple[int, ChunkAnswer]:
        """Mark every item of a chunk whose deliveries ran out as failed, so the job still ends."""
        try:
            ref = ChunkRef.from_event(event)
        except InvalidInput as exc:
            log.warning("dead letter ignored: %s", exc.message)
            return 200, {"ignored": exc.message}
        with self.db.begin() as conn:
            found = self._job_chunk(conn, ref)
        if isinstance(found, str):
            return 200, {"job_id": str(ref.job_id), "chunk": ref.chunk, "skipped": found}
        job, ref = found
        if job["status"] not in store.ACTIVE:
            return 200, {"job_id": str(ref.job_id), "chunk": ref.chunk, "skipped": f"job {job['status']}"}
        reason = dead_reason(event)
        rows: list[ResultRow] = [{"index": ref.start + i, "error": reason} for i in range(ref.count)]
        log.warning("batch job %s chunk %d dead-lettered: %s", ref.job_id, ref.chunk, reason)
        return self._store(ref, ChunkLines.of_rows(rows, store.ERROR_SAMPLE), "dead")
