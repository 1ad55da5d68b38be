"""Batch jobs: submit, status, list, cancel (the HTTP API and the intake share ``submit_job``).

Submit resolves the model (404 unknown/inactive), writes the inputs to S3 in chunks
of BATCH_CHUNK_SIZE, inserts the job, then emits one ``dev.kinfer.batch.chunk.v1``
CloudEvent per chunk to K_SINK. Emission is retried briefly; if it still fails the
job is marked ``failed`` with an error saying so (chunks already sent are skipped by
the worker) and the caller gets 503, so no job hangs silently in ``pending``.

The submit costs O(bytes) with no Python step per item: the body is parsed and checked in C-speed passes
(``parse_body``), ``inputs`` become chunk objects by serialising each chunk once (``inline_chunks``), and an
``input_url`` object is split into lines a piece at a time (``bounded_blocks``).
"""

from __future__ import annotations

import gc
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict, cast

import orjson

from shared import audit
from shared import validation as v
from shared.batch import results, store
from shared.batch.events import CHUNK_EVENT_TYPE, ChunkEventData
from shared.batch.store import JobRow, NewJob
from shared.clients import sink, storage
from shared.domain import BatchJob, JobStatus, ModelVersion
from shared.errors import Conflict, InvalidInput, NotFound, RateLimited, Unavailable

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from shared.audit import Actor
    from shared.batch.results import BatchResults
    from shared.clients.db import Database
    from shared.registry import ModelRegistry
    from shared.settings import Settings

log = logging.getLogger(__name__)

SUBMIT_FIELDS = ("model", "version", "inputs", "input_url")
EMIT_ATTEMPTS = 3
EMIT_BACKOFF_S = 0.2
PARALLEL_PUTS = 8


class JobSummary(TypedDict):
    """The answer of a submit (202): ``id`` and ``job_id`` are the same value."""

    id: str
    job_id: str
    status: str
    total: int


class UploadGrant(TypedDict):
    """The answer of POST /v1/batch/uploads: where to PUT the JSONL file, and its ``input_url``."""

    input_url: str
    upload_url: str
    method: str
    headers: dict[str, str]
    expires_in: int
    prefix: str


class JobPage(TypedDict):
    """A page of GET /v1/batch."""

    jobs: list[BatchJob]
    total_count: int
    total: int
    limit: int
    offset: int


class Cancelled(TypedDict):
    """The answer of DELETE /v1/batch/{id}."""

    id: str
    job_id: str
    status: str


# -- uploads ----------------------------------------------------------------------
UPLOADS = "uploads/"
UPLOAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def upload_prefix(owner: str) -> str:
    """The input-bucket prefix whose objects ``owner`` may name as ``input_url``."""
    return f"{UPLOADS}{owner}/"


def readable_input(url: str, input_bucket: str, prefixes: tuple[str, ...]) -> tuple[str, str]:
    """(bucket, key) of an ``input_url`` the caller may read; 400 otherwise.

    Decided from the URL alone, before any storage call, so the answer never tells
    whether someone else's object exists.
    """
    bucket, key = storage.parse_s3_url(url)
    segments = key.split("/")
    confined = bucket == input_bucket and key.startswith(prefixes) and all(s not in ("", ".", "..") for s in segments)
    if not confined:
        mine = f"s3://{input_bucket}/{prefixes[0]}"
        raise InvalidInput(
            f"input_url must name an object under your upload prefix {mine}; "
            "POST /v1/batch/uploads gives you an upload URL there",
            field="input_url",
        )
    return bucket, key


def _summary(job_id: object, status: str, total: int) -> JobSummary:
    """``id`` and ``job_id`` are the same value (``job_id`` kept for existing clients)."""
    return {"id": str(job_id), "job_id": str(job_id), "status": status, "total": total}


@dataclass(frozen=True)
class _Source:
    """Where a job's inputs come from: an ``inputs`` list, or an ``input_url`` object (read when called)."""

    inputs: list[object] | None = None
    bucket: str = ""
    key: str = ""
    max_items: int = 0

    def __call__(self, jobs: BatchJobs) -> Iterator[bytes]:
        """The encoded input lines, one by one."""
        if self.inputs is not None:
            return (orjson.dumps(item) for item in self.inputs)
        return jobs._s3_lines(self.bucket, self.key, self.max_items)

    def chunks(self, jobs: BatchJobs, size: int) -> Iterator[tuple[bytes, int]]:
        """The chunk input objects (JSON Lines of ``size`` items, the last fewer) and their item counts, in
        C-speed passes over the bytes (never a Python step per item)."""
        if self.inputs is not None:
            counts = (min(size, len(self.inputs) - start) for start in range(0, len(self.inputs), size))
            return zip(inline_chunks(self.inputs, size), counts, strict=True)
        return block_chunks(jobs._s3_blocks(self.bucket, self.key, self.max_items), size)


def _input_source(body: Mapping[str, object], settings: Settings, prefixes: tuple[str, ...]) -> _Source:
    """A reader of encoded inputs, from ``inputs`` or a streamed ``input_url``; 400 when neither or both."""
    has_inputs, has_url = "inputs" in body, "input_url" in body
    max_items = settings.batch_max_items
    if has_inputs == has_url:
        raise InvalidInput("give exactly one of inputs (a list) or input_url (s3://bucket/key.jsonl)", field="inputs")
    if has_url:
        bucket, key = readable_input(
            v.string(body["input_url"], "input_url", max_len=1024), settings.s3_input_bucket, prefixes
        )
        return _Source(bucket=bucket, key=key, max_items=max_items)
    inputs = body["inputs"]
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('inputs must be a non-empty list of inputs like {"data": [...]}', field="inputs")
    if len(inputs) > max_items:
        raise InvalidInput(f"inputs has {len(inputs)} items; the limit is {max_items}", field="inputs")
    return _Source(inputs=inputs)


READ_CHUNK_BYTES = 1024 * 1024


def bounded_lines(chunks: Iterable[bytes], max_line: int, max_total: int) -> Iterator[bytes]:
    """The non-empty, stripped lines of a byte stream, one by one (``bounded_blocks``)."""
    for block in bounded_blocks(chunks, max_line, max_total):
        yield from block


def bounded_blocks(chunks: Iterable[bytes], max_line: int, max_total: int) -> Iterator[list[bytes]]:
    """The non-empty, stripped lines of a byte stream, a list per chunk read, in time linear in its size:
    each chunk is scanned once (a line split over many chunks is joined once, at its end, never re-joined
    per chunk), and the lines between its first and last newline are split and checked in C-speed passes
    (their longest length; a blank line or a space at a line's edge, which then takes a step per line).

    InvalidInput (``input_url``) names the first line longer than ``max_line`` bytes, as soon as it is
    seen (the lines before it are given first), and a stream longer than ``max_total`` (an object whose
    size was not declared truthfully).
    """
    pending: list[bytes] = []  # the parts of the line still open
    pending_len = total = 0
    number = 1  # the physical line being read (empty lines counted: an editor's numbering)
    for chunk in chunks:
        total += len(chunk)
        if total > max_total:
            raise InvalidInput(
                f"input_url is more than {max_total} bytes; the limit is {max_total} (BATCH_MAX_INPUT_BYTES)",
                field="input_url",
            )
        first, last = chunk.find(b"\n"), chunk.rfind(b"\n")
        if first < 0:
            pending.append(chunk)
            pending_len += len(chunk)
            if pending_len > max_line:
                raise _line_too_long(number, max_line)
            continue
        if pending_len + first > max_line:
            raise _line_too_long(number, max_line)
        head = (b"".join((*pending, chunk[:first])) if pending else chunk[:first]).strip()
        lines = [head] if head else []
        middle = chunk[first + 1 : last].split(b"\n") if last > first else []
        number += 1
        clean = not middle or (
            max(map(len, middle)) <= max_line and all(middle) and not _EDGE_SPACE.search(chunk, first, last + 1)
        )
        if not clean:
            for line in middle:  # the general case, a line at a time
                if len(line) > max_line:
                    if lines:
                        yield lines
                    raise _line_too_long(number, max_line)
                number += 1
                if line := line.strip():
                    lines.append(line)
        else:
            lines += middle
            number += len(middle)
        if lines:
            yield lines
        pending = [chunk[last + 1 :]] if last + 1 < len(chunk) else []
        pending_len = len(chunk) - last - 1
        if pending_len > max_line:
            raise _line_too_long(number, max_line)
    if pending and (line := b"".join(pending).strip()):
        yield [line]


# Whitespace that ``bytes.strip`` removes at the edge of a line (newlines aside): such a line takes the slow path.
_EDGE_SPACE = re.compile(rb"\n[ \t\r\x0b\x0c]|[ \t\r\x0b\x0c]\n")


def block_chunks(blocks: Iterable[list[bytes]], size: int) -> Iterator[tuple[bytes, int]]:
    """Chunk input objects of ``size`` lines (the last fewer) and their line counts, from lists of lines."""
    pending: list[bytes] = []
    for block in blocks:
        pending += block
        while len(pending) >= size:
            yield b"\n".join(pending[:size]) + b"\n", size
            del pending[:size]
    if pending:
        yield b"\n".join(pending) + b"\n", len(pending)


def _line_too_long(number: int, max_line: int) -> InvalidInput:
    return InvalidInput(
        f"line {number} of input_url is longer than {max_line} bytes, the limit for one input "
        "(BATCH_MAX_LINE_BYTES); the job was not created",
        field="input_url",
    )


def inline_chunks(inputs: list[object], size: int) -> Iterator[bytes]:
    """The chunk input objects (JSON Lines, ``size`` items each) of an ``inputs`` list, in C-speed passes:
    each chunk is serialised as one array, whose top-level commas become newlines when the text proves
    where they are (see ``_array_lines``); else each item is serialised on its own."""
    for start in range(0, len(inputs), size):
        part = inputs[start : start + size]
        text = orjson.dumps(part)
        lines = _array_lines(text, len(part))
        yield lines if lines is not None else b"\n".join(orjson.dumps(item) for item in part) + b"\n"


def _array_lines(text: bytes, count: int) -> bytes | None:
    """JSON Lines of the compact array ``text`` of ``count`` items, when every item is an object holding no
    other ``{``: the text then starts with ``[{``, ends with ``}]`` and holds ``count`` ``{`` and ``count - 1``
    ``},{``, and every ``},{`` is a boundary between two items (one in an item would need a ``{`` of its
    own); None otherwise."""
    if not (text.startswith(b"[{") and text.endswith(b"}]")):
        return None
    if text.count(b"{") != count or text.count(b"},{") != count - 1:
        return None
    return text[1:-1].replace(b"},{", b"}\n{") + b"\n"


# Arrays and objects a POST /v1/batch body may hold (``validation.MAX_CONTAINERS`` for other bodies): an
# array and an object for each of BATCH_MAX_ITEMS' default 1,000,000 inline items, and room to spare.
BODY_MAX_CONTAINERS = 2_100_000


def parse_body(raw: bytes) -> object:
    """A POST /v1/batch body, as strict as ``validation.parse_json`` (which gives every refusal its reason),
    in C-speed passes: unless the body spells a ``:`` as ``\\u003a``, a repeated key shows as fewer ``:`` in
    the parsed value serialised again (a ``:`` in a string is one in both; a dropped key takes its own)."""
    if raw.count(b"[") + raw.count(b"{") > BODY_MAX_CONTAINERS:  # strings set aside, counted exactly there
        return v.parse_json(raw, "body", BODY_MAX_CONTAINERS)
    collecting = gc.isenabled()
    gc.disable()  # a fresh tree holds no garbage (as in ``validation.parse_json``)
    try:
        value = orjson.loads(raw)
        copy = orjson.dumps(value)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return v.parse_json(raw, "body", BODY_MAX_CONTAINERS)
    finally:
        if collecting:
            gc.enable()
    if b"\\u003a" in raw or b"\\u003A" in raw or raw.count(b":") != copy.count(b":"):
        return v.parse_json(raw, "body", BODY_MAX_CONTAINERS)
    return value


def _chunked(lines: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


LIST_QUERY = ("status", "limit", "offset")


class BatchJobs:
    """Owns batch jobs: upload grants, submit (chunk inputs and their events), read, list and cancel."""

    def __init__(
        self,
        db: Database,
        s3: Any,
        s3_presigner: Any,
        registry: ModelRegistry,
        results: BatchResults,
        ensure_buckets: Callable[[], None],
        settings: Settings,
    ) -> None:
        self.db = db
        self.s3 = s3
        self.s3_presigner = s3_presigner
        self.registry = registry
        self.results = results
        self.ensure_buckets = ensure_buckets
        self.settings = settings

    # -- uploads --------------------------------------------------------------------
    def create_upload(self, body: object, owner: str) -> UploadGrant:
        """A presigned PUT URL for a new JSONL object under the owner's prefix, and its ``input_url``.

        The URL is signed for exactly ``size`` bytes (``Content-Length`` is a signed header, which S3 and
        MinIO check), at most BATCH_MAX_INPUT_BYTES: an upload URL never admits an unbounded object.
        """
        body = v.require_object(body if body is not None else {})
        v.reject_unknown(body, ("filename", "size"))
        limit = self.settings.batch_max_input_bytes
        size = body.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= limit:
            raise InvalidInput(
                f"size must be the file's length in bytes, 1 to {limit} (BATCH_MAX_INPUT_BYTES): the upload URL "
                "is signed for exactly that many bytes",
                field="size",
            )
        filename = v.string(
            body.get("filename", "inputs.jsonl"),
            "filename",
            max_len=128,
            pattern=UPLOAD_NAME,
            hint="letters, digits, '.', '_' or '-'",
        )
        settings = self.settings
        self.ensure_buckets()
        key = f"{upload_prefix(owner)}{uuid.uuid4().hex}/{filename}"
        expires = settings.result_url_expiry_s
        url = storage.presign_put(
            self.s3_presigner, settings.s3_input_bucket, key, expires, storage.JSONL_TYPE, content_length=size
        )
        return {
            "input_url": f"s3://{settings.s3_input_bucket}/{key}",
            "upload_url": url,
            "method": "PUT",
            "headers": {"Content-Type": storage.JSONL_TYPE, "Content-Length": str(size)},
            "expires_in": expires,
            "prefix": f"s3://{settings.s3_input_bucket}/{upload_prefix(owner)}",
        }

    # -- submit ---------------------------------------------------------------------
    def submit_job(
        self, body: object, owner: str, *, intake_key: str | None = None, readable: tuple[str, ...] = ()
    ) -> JobSummary:
        """Create a job from a POST /v1/batch body; 202-style ``{"id", "job_id", "status", "total"}``.

        ``input_url`` may only name an object under the owner's upload prefix (or under
        ``readable`` prefixes of the input bucket, which the event intake passes).
        """
        request = v.require_object(body)
        v.reject_unknown(request, SUBMIT_FIELDS)
        name = v.string(request.get("model"), "model", max_len=128)
        version = request.get("version")
        if version is not None:
            version = v.string(str(version), "version", max_len=32)
        source = _input_source(request, self.settings, (upload_prefix(owner), *readable))
        count = len(source.inputs) if source.inputs is not None else 0
        if intake_key is not None:
            existing = self._existing(intake_key)
            if existing is not None:
                return existing
        # A version or an alias; a split is sticky per owner. The job keeps the version picked here.
        model = self.registry.resolve_model(name, version, route_key=owner)
        # A fast refusal before any input is written; the binding check runs again, locked, in the transaction
        # that inserts the job. Jobs from events are bounded too: their owner is "anonymous", whose share is
        # the same as a key's (a 429 makes the event source redeliver later).
        with self.db.read() as conn:
            self._refuse_past_the_keys_share(conn, owner, count)
        self.ensure_buckets()
        if source.inputs is not None:
            created = self._submit_inline(model, owner, source, count, intake_key)
        else:
            created = self._submit_streamed(model, owner, source, str(request["input_url"]), intake_key)
        if created is None:  # a redelivered intake event: the job exists already
            return self._existing(intake_key) or cast(JobSummary, {})
        log.info(
            "batch job %s created: %d item(s) in %d chunk(s)", created["id"], created["total"], created["chunks_total"]
        )
        return _summary(created["id"], JobStatus.PENDING, created["total"])

    def _refuse_past_the_keys_share(self, conn: Connection, owner: str, items: int, *, lock: bool = False) -> None:
        """429 when this key already has BATCH_MAX_ACTIVE_JOBS jobs, or BATCH_MAX_ACTIVE_ITEMS items with this
        job's, pending or processing: one key's jobs must not hold every worker while another key's wait.
        ``lock``: in the inserting transaction, under the owner's lock (no two submits pass together)."""
        settings = self.settings
        jobs, active = store.active_load(conn, owner, lock=lock)
        if jobs >= settings.batch_max_active_jobs:
            raise RateLimited(
                f"this key has {jobs} batch jobs pending or processing, the most it may have at once "
                f"(BATCH_MAX_ACTIVE_JOBS); submit more when one ends, or cancel one",
                retry_after=10,
            )
        if active + items > settings.batch_max_active_items:
            raise RateLimited(
                f"this key has {active} batch items pending or processing; with this job's {items} that is over "
                f"{settings.batch_max_active_items} (BATCH_MAX_ACTIVE_ITEMS); submit it when some end",
                retry_after=10,
            )

    def _submit_inline(
        self, model: ModelVersion, owner: str, source: _Source, total: int, intake_key: str | None
    ) -> JobRow | None:
        """Known size: insert the job first, then write and emit each chunk in a pipeline (workers start early)."""
        size = self.settings.batch_chunk_size
        row = self._job_row(uuid.uuid4(), model, owner, total, -(-total // size), None, intake_key)
        with self.db.begin() as conn:
            self._refuse_past_the_keys_share(conn, owner, total, lock=True)
            created = store.insert_job(conn, row)
        if created is not None:
            self._queue(created, (data for data, _ in source.chunks(self, size)), write=True)
        return created

    def _submit_streamed(
        self,
        model: ModelVersion,
        owner: str,
        source: _Source,
        input_url: str,
        intake_key: str | None,
    ) -> JobRow | None:
        """Unknown size (input_url): stream the chunks to S3, insert the job, then emit."""
        job_id = uuid.uuid4()
        total, chunks = self._write_inputs(job_id, source)
        row = self._job_row(job_id, model, owner, total, chunks, input_url, intake_key)
        try:
            with self.db.begin() as conn:
                # Counted now that the input's size is known: an input_url job holds its real item count.
                self._refuse_past_the_keys_share(conn, owner, total, lock=True)
                created = store.insert_job(conn, row)
        except RateLimited:
            self.results.delete_job_objects(job_id)
            raise
        if created is None:
            self.results.delete_job_objects(job_id)
            return None
        self._queue(created, (None for _ in range(chunks)), write=False)
        return created

    def _existing(self, intake_key: str | None) -> JobSummary | None:
        with self.db.begin() as conn:
            job = store.job_by_intake_key(conn, intake_key) if intake_key else None
        return None if job is None else _summary(job["id"], job["status"], job["total"])

    def _s3_lines(self, bucket: str, key: str, max_items: int) -> Iterator[bytes]:
        """The non-empty lines of an S3 object, one by one (``_s3_blocks``)."""
        for block in self._s3_blocks(bucket, key, max_items):
            yield from block

    def _s3_blocks(self, bucket: str, key: str, max_items: int) -> Iterator[list[bytes]]:
        """The non-empty lines of an S3 object, a list per piece read, streamed in linear time (never the
        whole object, nor more than a piece and one line, in memory); 400 for an object over
        BATCH_MAX_INPUT_BYTES or a line over BATCH_MAX_LINE_BYTES, before reading on."""
        settings = self.settings
        count = 0
        with storage.translated(f"s3://{bucket}/{key}"):
            found = self.s3.get_object(Bucket=bucket, Key=key)
            body = found["Body"]
            try:
                size = int(found.get("ContentLength") or 0)
                if size > settings.batch_max_input_bytes:
                    raise InvalidInput(
                        f"input_url is {size} bytes; the limit is {settings.batch_max_input_bytes} "
                        "(BATCH_MAX_INPUT_BYTES): split it into several jobs",
                        field="input_url",
                    )
                chunks = body.iter_chunks(READ_CHUNK_BYTES)
                for block in bounded_blocks(chunks, settings.batch_max_line_bytes, settings.batch_max_input_bytes):
                    count += len(block)
                    if count > max_items:
                        raise InvalidInput(
                            f"input_url has more than {max_items} lines; the limit is {max_items}", field="input_url"
                        )
                    yield block
            finally:
                body.close()

    def _write_inputs(self, job_id: uuid.UUID, source: _Source) -> tuple[int, int]:
        """Write the chunk input objects; (total items, chunks). Nothing is left behind on failure."""
        bucket, size = self.settings.s3_input_bucket, self.settings.batch_chunk_size
        total = chunks = 0
        try:
            with ThreadPoolExecutor(PARALLEL_PUTS, thread_name_prefix="batch-put") as pool:
                pending = []
                for number, (data, count) in enumerate(source.chunks(self, size)):
                    pending.append(pool.submit(self.results.put_lines, bucket, results.input_key(job_id, number), data))
                    total, chunks = total + count, chunks + 1
                    if len(pending) >= 2 * PARALLEL_PUTS:
                        pending.pop(0).result()
                for future in pending:
                    future.result()
        except BaseException:
            self.results.delete_job_objects(job_id)
            raise
        if total == 0:
            raise InvalidInput("input_url holds no inputs (every line is empty)", field="input_url")
        return total, chunks

    def _job_row(
        self,
        job_id: uuid.UUID,
        model: ModelVersion,
        owner: str,
        total: int,
        chunks: int,
        input_url: str | None,
        intake_key: str | None,
    ) -> NewJob:
        return {
            "id": job_id,
            "owner": owner[:128],
            "model_name": model["name"],
            "model_version": model["version"],
            "model_id": uuid.UUID(model["id"]),
            "status": JobStatus.PENDING,
            "total": total,
            "chunk_size": self.settings.batch_chunk_size,
            "chunks_total": chunks,
            "input_url": input_url,
            "intake_key": intake_key,
        }

    def _queue(self, job: JobRow, chunks: Iterator[bytes | None], *, write: bool) -> None:
        """Write (when ``write``) and emit every chunk, a few in parallel; on lasting failure mark the job
        failed and raise Unavailable, so no job waits forever for chunks that were never queued."""
        traceparent = sink.current_traceparent()
        pending: list[tuple[int, Future[None]]] = []
        number = -1
        try:
            with ThreadPoolExecutor(PARALLEL_PUTS, thread_name_prefix="batch-queue") as pool:
                for number, data in enumerate(chunks):
                    pending.append((number, pool.submit(self._queue_one, job, number, data, traceparent)))
                    while len(pending) > 2 * PARALLEL_PUTS or (pending and pending[0][1].done()):
                        number, future = pending.pop(0)
                        future.result()
                for _, future in pending:
                    future.result()
        except Exception as exc:
            self._fail_enqueue(job, number, exc)
            raise Unavailable(
                f"batch job {job['id']} could not be queued (storage or event sink unavailable at "
                f"chunk {number} of {job['chunks_total']}); it was marked failed, submit it again",
                retry_after=5,
            ) from exc

    def _queue_one(self, job: JobRow, chunk: int, data: bytes | None, traceparent: str | None) -> None:
        if data is not None:
            self.results.put_lines(self.settings.s3_input_bucket, results.input_key(job["id"], chunk), data)
        self._emit_one(job, chunk, traceparent)

    def emit_chunk(self, job: JobRow, chunk: int) -> None:
        """Queue (again) the event of one chunk whose input object is already written."""
        self._emit_one(job, chunk, None)

    def _emit_one(self, job: JobRow, chunk: int, traceparent: str | None) -> None:
        first = chunk * job["chunk_size"]
        count = min(job["chunk_size"], job["total"] - first)
        data: ChunkEventData = {
            "job_id": str(job["id"]),
            "chunk": chunk,
            "start": first,
            "count": count,
            "bucket": self.settings.s3_input_bucket,
            "key": results.input_key(job["id"], chunk),
            "model": job["model_name"],
            "version": job["model_version"],
            "model_id": str(job["model_id"]),
        }
        extensions = {"partitionkey": f"{job['id']}-{chunk}"}
        if traceparent:
            extensions["traceparent"] = traceparent
        # Retried briefly, all within EVENT_EMIT_TIMEOUT_S: a stalled sink answers the submit 503 in seconds
        deadline = time.monotonic() + self.settings.event_emit_timeout_s
        for attempt in range(EMIT_ATTEMPTS):
            try:
                sink.emit(
                    self.settings,
                    type=CHUNK_EVENT_TYPE,
                    source=self.settings.event_source,
                    subject=str(job["id"]),
                    data=dict(data),
                    extensions=extensions,
                    id=f"{job['id']}:{chunk}",
                    timeout_s=max(0.05, deadline - time.monotonic()),
                )
                return
            except Unavailable:
                backoff = EMIT_BACKOFF_S * 2**attempt
                if attempt == EMIT_ATTEMPTS - 1 or time.monotonic() + backoff >= deadline:
                    raise
                time.sleep(backoff)

    def _fail_enqueue(self, job: JobRow, chunk: int, exc: Exception) -> None:
        log.error(
            "batch job %s: queueing chunk %d failed (%s); marking the job failed", job["id"], chunk, type(exc).__name__
        )
        reason = (
            f"could not queue chunk {chunk} of {job['chunks_total']}: object storage or the event sink is unavailable"
        )
        with self.db.begin() as conn:
            store.set_finished(conn, job["id"], JobStatus.FAILED, error=reason)
            store.clear_intake_key(conn, job["id"])  # a redelivered intake event may try again
        self.results.delete_job_objects(job["id"])

    # -- read -----------------------------------------------------------------------
    def to_json(self, job: JobRow) -> BatchJob:
        """The job status body of GET /v1/batch/{id} (README "Batch jobs")."""
        total, completed = int(job["total"]), int(job["completed"])
        finished = job["status"] in store.FINISHED
        body: BatchJob = {
            "id": str(job["id"]),
            "job_id": str(job["id"]),
            "status": job["status"],
            "progress": round(completed / total, 6) if total else (1.0 if finished else 0.0),
            "total": total,
            "completed": completed,
            "succeeded": int(job["succeeded"]),
            "failed": int(job["failed"]),
            "result_url": self._result_url(job) if finished else None,
            "errors": list(job["errors"] or []),
            "model": job["model_name"],
            "version": job["model_version"],
            "created_at": _iso(job["created_at"]),
            "started_at": _iso(job["started_at"]),
            "finished_at": _iso(job["finished_at"]),
        }
        if error := job.get("error"):
            body["error"] = error
        if input_url := job.get("input_url"):
            body["input_url"] = input_url
        return body

    def _result_url(self, job: JobRow) -> str | None:
        """A presigned URL of the job's results object while that object exists (a lifecycle rule, or a
        local S3 that lost its data, may have removed it); None otherwise."""
        if not job["result_key"]:
            return None
        try:
            if not storage.exists(self.s3, self.settings.s3_results_bucket, job["result_key"]):
                return None
        except Unavailable:
            log.warning("batch job %s: object storage unavailable; result_url left out", job["id"])
            return None
        return self.results.presigned_results(job["result_key"])

    def _reaped(self, jobs: list[JobRow]) -> list[JobRow]:
        """``jobs``, with the active ones that stopped progressing failed now (see shared.batch.reaper)."""
        stall_s = self.settings.batch_stall_timeout_s
        now = time.time()
        stale = [j["id"] for j in jobs if j["status"] in store.ACTIVE and now - j["updated_at"].timestamp() > stall_s]
        if not stale:
            return jobs
        with self.db.begin() as conn:
            failed = {row["id"]: row for row in store.fail_stalled(conn, stall_s, stale)}
        for job_id in failed:
            log.warning("batch job %s failed: no progress for %d s", job_id, stall_s)
        return [failed.get(j["id"], j) for j in jobs]

    def get_job(self, raw_id: str, owner: str) -> BatchJob:
        job_id = store.parse_job_id(raw_id)
        with self.db.begin() as conn:
            job = store.get_job(conn, job_id, owner)
        return self.to_json(self._reaped([job])[0])

    def list_jobs(self, args: Mapping[str, str], owner: str) -> JobPage:
        """``{"jobs", "total_count", "total", "limit", "offset"}``, filtered by ``status`` and ``q`` (a part of the
        model's name, any case): ``total_count`` (and, kept for existing
        clients, ``total``) counts the jobs matching; each job's own ``total`` counts its items."""
        limit = v.integer(args.get("limit"), "limit", default=50, lo=1, hi=500)
        offset = v.integer(args.get("offset"), "offset", default=0, lo=0, hi=10_000_000)
        status = v.choice(args["status"], "status", store.STATUSES) if args.get("status") else None
        model_part = v.string(args["q"], "q", max_len=128) if args.get("q") else None
        with self.db.begin() as conn:
            total, jobs = store.list_jobs(conn, owner, status, limit, offset, model_part)
        jobs = self._reaped(jobs)
        return {
            "jobs": [self.to_json(j) for j in jobs],
            "total_count": total,
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    def cancel_job(self, raw_id: str, owner: str, actor: Actor | None = None) -> Cancelled:
        """Cancel an active job (409 when finished); the results of chunks already done are kept.
        Audited as ``job.cancel``."""
        job_id = store.parse_job_id(raw_id)
        with self.db.begin() as conn:
            job = store.get_job(conn, job_id, owner)
            cancelled = store.set_finished(conn, job_id, JobStatus.CANCELLED)
            if cancelled is not None:
                before = {k: job[k] for k in ("owner", "model_name", "model_version", "status", "completed", "total")}
                after = {**before, "status": JobStatus.CANCELLED}
                target = audit.target("job", str(job_id))
                audit.append(conn, actor=actor, action="job.cancel", target=target, before=before, after=after)
            # The job may have finished between the read and the update: name the state it is in now.
            current = None if cancelled is not None else store.job_status(conn, job_id)
        if cancelled is None:
            raise Conflict(
                f"batch job {job_id} is already {current}; only pending or processing jobs can be "
                f"cancelled (GET /v1/batch/{job_id} shows how it ended)"
            )
        self._keep_partial_results(job_id)
        return {"id": str(job_id), "job_id": str(job_id), "status": JobStatus.CANCELLED}

    def _keep_partial_results(self, job_id: uuid.UUID) -> None:
        """Merge the chunks recorded before the cancel (counters no longer move) into the results object."""
        with self.db.begin() as conn:
            chunks = store.done_chunks(conn, job_id)
        try:
            key = self.results.merge_chunks(job_id, chunks)
        except (NotFound, Unavailable) as exc:
            log.warning("batch job %s: partial results not written (%s)", job_id, type(exc).__name__)
            return
        with self.db.begin() as conn:
            store.set_result_key(conn, job_id, key)
