"""Payload capture: a sampled record of real-time requests and answers, written to S3 off the hot path.

The data path calls ``Capture.offer`` once per answered (or failed) request: a dict lookup for the
model's rule (``capture_rules``), one random draw, and an append to a bounded in-memory queue. Nothing
on that path waits for S3: a sampled record is redacted and serialised at once (its exact size bounds the
queue's memory, and nothing keeps a reference to the request's objects); when the queue is full (by
records or by bytes) it is dropped and counted (``kinfer_capture_dropped_total{reason="queue_full"}``).
A background thread writes batches as JSON lines under
``capture/<model>/<version>/<YYYY-MM-DD>/<HH>/<uuid>.jsonl[.gz]`` in CAPTURE_BUCKET, when a batch is
full, every CAPTURE_FLUSH_S seconds and at shutdown (``close``). A failed write drops that batch
(counted, reason ``write_failed``) and never reaches a caller.

The S3 calls themselves run in a child process (``WriterProcess``, ``python -m shared.inference.capture``):
boto3 is pure Python (signing, request building, response parsing), and on the serving process's writer
thread it held the interpreter lock in slices that the event loop waited behind after each of its system
calls; the serving process only hands each finished object over a pipe and reads one reply.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, Protocol, TypedDict

import orjson
from opentelemetry import trace

from shared import telemetry
from shared.logs import request_id_var

if TYPE_CHECKING:
    from shared.errors import KinferError
    from shared.inference.capture_rules import CaptureRules
    from shared.settings import Settings

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
PREFIX = "capture"
UNRESOLVED = "_"  # the version segment of a request that failed before a version was chosen


class CaptureRecord(TypedDict):
    """One captured request: who, what, how it went; ``input`` is redacted before it is written."""

    request_id: str | None
    trace_id: str | None
    key_id: str | None
    model: str
    version: str
    requested: str | None
    protocol: str
    outcome: str
    status: int
    latency_ms: float
    timestamp: str
    input: object
    outputs: NotRequired[object]
    prediction: NotRequired[object]
    redact: NotRequired[list[str]]


@dataclass(frozen=True, slots=True)
class Request:
    """What the data path knows of a request to capture: ``requested`` is the version or alias it named,
    ``version`` the registry version that served it ('' when none was chosen)."""

    model: str
    requested: str | None
    protocol: str
    key_id: str | None
    started: float
    input: object
    version: str = ""


@dataclass(frozen=True, slots=True)
class Answer:
    version: str
    outputs: object
    prediction: object = None


class PutObject(Protocol):
    def __call__(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...


def redacted(value: object, fields: list[str]) -> object:
    """``value`` with each input field named in ``fields`` replaced by the marker: a /v1/infer ``input``
    (tensor name -> values) or v2 ``inputs`` (a list of tensors, whose ``data`` is replaced). The shorthand
    ``{"data": ...}`` (also what KServe v1 ``instances`` of rows become) is a single-input model's one input
    under another name: it is redacted whenever any field is, since the field named can only be that input
    (and a name that is not would err towards hiding, never towards writing what was meant to be hidden)."""
    if not fields:
        return value
    if isinstance(value, Mapping):
        if len(value) == 1 and "data" in value:
            return {"data": REDACTED}
        return {k: (REDACTED if k in fields else v) for k, v in value.items()}
    if isinstance(value, list):
        return [{**t, "data": REDACTED} if isinstance(t, Mapping) and t.get("name") in fields else t for t in value]
    return value


def object_key(model: str, version: str, at: datetime, gzipped: bool) -> str:
    """Where one batch of a model version's records goes: partitioned by date and hour (UTC)."""
    suffix = ".jsonl.gz" if gzipped else ".jsonl"
    return f"{PREFIX}/{model}/{version}/{at:%Y-%m-%d}/{at:%H}/{uuid.uuid4().hex}{suffix}"


def current_trace_id() -> str | None:
    """The running request's trace id (sampled or not), None outside one."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class S3Objects:
    """``PutObject`` on an S3 client made by ``connect`` when first needed (in the writer process, or by a writer
    thread given it directly: never on the event loop, since importing boto3 and building a client hold the
    interpreter for about 0.3 s); creates the bucket on its first write (again after a failed write)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect
        self._client: Any = None
        self._ready: set[str] = set()

    def warm(self) -> None:
        """Import boto3 and build the client now (the writer calls this as it starts, before any batch is due)."""
        if self._client is None:
            self._client = self.connect()

    def __call__(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        from shared.clients import storage  # boto3: off the infer function's cold start

        self.warm()
        if bucket not in self._ready:
            storage.ensure_buckets(self._client, bucket)
            self._ready.add(bucket)
        try:
            storage.put_bytes(self._client, bucket, key, data, content_type)
        except Exception:
            self._ready.discard(bucket)
            raise


class WriterFailed(Exception):
    """The writer process could not store an object (its reason: the S3 error's type and message)."""


class WriterProcess:
    """``PutObject`` by a child process that owns the S3 client: each call pickles ``(bucket, key, data,
    content_type)`` onto the child's stdin and waits for its one-object reply (None, or the failure's reason),
    so objects are written in order, one at a time, as by the thread alone. The child is started by ``warm``
    (the writer thread calls it once any capture setting exists: a process that captures nothing has none),
    again after it exits, and gets ``settings`` as its first message
    (never on its command line or in its environment). It runs in its own session (a Ctrl-C or a signal to the
    server's process group does not cut the last flush short) and ends when its stdin closes: at ``close``, or
    when the serving process dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None

    def warm(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        root = str(Path(__file__).resolve().parents[2])  # where ``shared`` is importable from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.inference.capture"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        self._proc = proc
        self._send(self.settings)

    def __call__(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self.warm()
        self._send((bucket, key, data, content_type))
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            reason = pickle.load(proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            self._stop()
            raise WriterFailed(f"the capture writer process exited ({type(exc).__name__})") from exc
        if reason is not None:
            raise WriterFailed(reason)

    def _send(self, message: object) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            pickle.dump(message, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
        except OSError as exc:  # the child is gone (killed, out of memory): the next call starts another
            self._stop()
            raise WriterFailed(f"the capture writer process exited ({type(exc).__name__})") from exc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        """Let the child finish and exit (after the last flush)."""
        self._stop()


def serve_writes(stdin: Any, stdout: Any) -> None:
    """The writer process: read the settings, then ``(bucket, key, data, content_type)`` messages until stdin
    closes; store each through ``S3Objects`` and answer None or the failure's reason."""
    from shared.clients.storage import make_s3_client

    settings = pickle.load(stdin)
    objects = S3Objects(lambda: make_s3_client(settings))
    objects.warm()  # boto3 imported and the client built before the first batch is due
    while True:
        try:
            bucket, key, data, content_type = pickle.load(stdin)
        except EOFError:
            return
        reason = None
        try:
            objects(bucket, key, data, content_type)
        except Exception as exc:  # noqa: BLE001 - reported to the serving process, which counts the drop
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("capture write of %s failed: %s", key, reason)
        pickle.dump(reason, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


class Capture:
    """The bounded queue of captured records and the thread that writes them (one per process)."""

    def __init__(
        self,
        rules: CaptureRules,
        put: PutObject,
        settings: Settings,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.rules = rules
        self.put = put
        self.bucket = settings.capture_bucket
        self.max_records = settings.capture_queue_max
        self.max_bytes = settings.capture_queue_max_bytes
        self.batch_max = settings.capture_batch_max
        self.flush_s = settings.capture_flush_s
        self.gzip = settings.capture_gzip
        self.draw = draw
        self._queue: deque[tuple[str, str, bytes]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()

    # -- the hot path ---------------------------------------------------------------------
    def sampled(self, model: str, requested: str | None) -> list[str] | None:
        """The redacted fields when this request is to be captured (a rule matches and the draw hits), else None."""
        self._ensure_started()
        rule = self.rules.rule_for(model, requested)
        if rule is None:
            return None
        percent = rule["sample_percent"]
        if percent <= 0 or (percent < 100 and self.draw() * 100 >= percent):
            return None
        return rule["redact"]

    def offer(self, record: CaptureRecord) -> bool:
        """Queue one record, redacted and serialised; False (and counted) when the queue is full."""
        counters = telemetry.metrics()
        try:
            line = _line(record)
        except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits in a refused input
            counters.capture_dropped.labels("unserialisable").inc()
            return False
        weight = len(line)
        with self._lock:
            if len(self._queue) >= self.max_records or self._bytes + weight > self.max_bytes:
                counters.capture_dropped.labels("queue_full").inc()
                return False
            self._queue.append((record["model"], record["version"], line))
            self._bytes += weight
            size = len(self._queue)
        counters.capture_captured.inc()
        if size >= self.batch_max:
            self._wake.set()
        return True

    def record(self, request: Request, answer: Answer | None, error: KinferError | None, redact: list[str]) -> None:
        """Queue the record of one sampled request (``redact``: what ``sampled`` answered) and how it went."""
        record: CaptureRecord = {
            "request_id": request_id_var.get(),
            "trace_id": current_trace_id(),
            "key_id": request.key_id,
            "model": request.model,
            "version": (answer.version if answer else request.version) or UNRESOLVED,
            "requested": request.requested,
            "protocol": request.protocol,
            "outcome": "ok" if error is None else error.code,
            "status": 200 if error is None else error.status,
            "latency_ms": round((time.perf_counter() - request.started) * 1000, 3),
            "timestamp": _timestamp(time.time()),
            "input": request.input,
        }
        if answer is not None:
            record["outputs"] = answer.outputs
            if answer.prediction is not None:
                record["prediction"] = answer.prediction
        if redact:
            record["redact"] = redact
        self.offer(record)

    # -- the writer -----------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._started:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        tick = min(self.flush_s, self.rules.ttl_s)
        due = time.monotonic() + self.flush_s
        warm = getattr(self.put, "warm", None)
        while not self._stop.is_set():
            try:
                self.rules.refresh_if_stale()
            except Exception:  # noqa: BLE001 - e.g. a database not migrated yet: keep the last rules, keep writing
                log.exception("capture settings not reloaded")
            if warm is not None and self.rules.any():  # the S3 side is readied once something may be captured
                try:
                    warm()
                    warm = None
                except Exception:  # noqa: BLE001 - S3 unreachable: each write tries again and counts its drops
                    log.warning("capture storage not ready yet", exc_info=True)
            if self.pending() >= self.batch_max or time.monotonic() >= due:
                self.flush()
                due = time.monotonic() + self.flush_s
            self._wake.wait(tick)
            self._wake.clear()

    def flush(self) -> int:
        """Write what is queued as the flush starts, in objects of at most CAPTURE_BATCH_MAX records; the records
        written. Records queued while it writes wait for the next flush: taking them at once turned a flush
        under load into a stream of objects of a few records each (one S3 request per handful of records)."""
        written, left = 0, self.pending()
        while left > 0:
            batch = self._take(min(left, self.batch_max))
            if not batch:
                break
            left -= len(batch)
            written += self._write(batch)
        return written

    def _take(self, n: int) -> list[tuple[str, str, bytes]]:
        with self._lock:
            n = min(len(self._queue), n)
            taken = [self._queue.popleft() for _ in range(n)]
            self._bytes -= sum(len(line) for _, _, line in taken)
        return taken

    def _write(self, batch: list[tuple[str, str, bytes]]) -> int:
        groups: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for model, version, line in batch:
            groups[(model, version)].append(line)
        now, counters, written = datetime.now(UTC), telemetry.metrics(), 0
        for (model, version), lines in groups.items():
            data = b"".join(lines)
            try:
                if self.gzip:
                    data = gzip.compress(data, compresslevel=5)
                self.put(self.bucket, object_key(model, version, now, self.gzip), data, "application/x-ndjson")
            except Exception as exc:  # noqa: BLE001 - S3 down or slow never reaches a caller
                counters.capture_dropped.labels("write_failed").inc(len(lines))
                reason = str(exc) if isinstance(exc, WriterFailed) else type(exc).__name__
                log.warning("capture write failed, %d records dropped: %s", len(lines), reason)
                continue
            counters.capture_written.inc(len(lines))
            written += len(lines)
        return written

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop the writer and write what is queued (shutdown)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.flush_s + 30)
        self.flush()
        close = getattr(self.put, "close", None)
        if close is not None:
            close()


_second: tuple[int, str] = (0, "")  # the last whole second and its ISO 8601 text (one tuple: thread-safe swap)


def _timestamp(now: float) -> str:
    """``now`` (epoch seconds) in ISO 8601 UTC with microseconds, as ``datetime.isoformat`` writes it, at a
    third of its cost: the date and time of day are formatted once per second."""
    global _second
    second = int(now)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{int((now - second) * 1_000_000):06d}+00:00"


def _line(record: CaptureRecord) -> bytes:
    fields = record.pop("redact", None) or []
    record["input"] = redacted(record["input"], fields)
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE, default=str)


if __name__ == "__main__":  # the writer process (``WriterProcess``)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when it ends: stdin closes
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="capture-writer: %(levelname)s %(message)s")
    serve_writes(sys.stdin.buffer, sys.stdout.buffer)
