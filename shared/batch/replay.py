"""Replay: a batch job built from captured traffic (``shared.inference.capture``), run on a candidate version,
and a comparison of its answers with the captured ones.

``POST /v1/batch`` with ``from_capture: {model, version?, since, until}`` (admin scope: captured inputs are
every caller's) reads the capture objects of that window, keeps the records that were answered and whose
inputs were not redacted, writes their inputs (the batch input) and their captured answers (the expected
lines) under ``replay/<id>/`` in the batch input bucket, and submits the inputs as an ordinary job on
``version`` (the candidate; default: the model's default). Once the job has finished, its status carries
``comparison``: how many predictions are equal or differ, and the mean absolute difference of numeric
outputs, item by item (kept next to the inputs once computed).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from shared import validation as v
from shared.batch import results as batch_results
from shared.batch import store
from shared.clients import storage
from shared.domain import BatchJob, ReplayComparison, ReplayDifference
from shared.errors import InvalidInput, KinferError, NotFound
from shared.inference.capture import PREFIX, REDACTED
from shared.registry.rules import NAME

if TYPE_CHECKING:
    from shared.batch.jobs import BatchJobs, JobSummary
    from shared.settings import Settings

log = logging.getLogger(__name__)

REPLAY = "replay/"
WINDOW_FIELDS = ("model", "version", "since", "until")
MAX_EXAMPLES = 20  # differing items named in a comparison (index, captured request id, both answers)
MAX_OBJECTS = 10_000


def _time(raw: object, field: str) -> datetime:
    text = v.string(raw, field, max_len=64)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO 8601 time, e.g. 2026-01-31T14:00:00Z", field=field) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def parse_window(raw: object) -> tuple[str, str | None, datetime, datetime]:
    """(model, version or None, since, until) of ``from_capture``; 400 naming the field otherwise."""
    body = v.require_object(raw, "from_capture")
    v.reject_unknown(body, WINDOW_FIELDS)
    model = v.string(body.get("model"), "from_capture.model", max_len=128, pattern=NAME)
    version = body.get("version")
    if version is not None:
        version = v.string(str(version), "from_capture.version", max_len=32)
    since = _time(body.get("since"), "from_capture.since")
    until = _time(body.get("until"), "from_capture.until")
    if since >= until:
        raise InvalidInput("from_capture.since must be before from_capture.until", field="from_capture.since")
    return model, version, since, until


def _hour_of(key: str) -> datetime | None:
    """The date-hour partition of a capture object key (capture/<m>/<v>/<YYYY-MM-DD>/<HH>/<file>)."""
    parts = key.split("/")
    try:
        return datetime.strptime(f"{parts[-3]} {parts[-2]}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    except (ValueError, IndexError):
        return None


def replay_input(record: dict[str, Any]) -> object:
    """A captured record's input as a batch item (v2 tensors become ``{name: values}``); None when it cannot
    be replayed (redacted, or binary tensor data)."""
    raw = record.get("input")
    if record.get("protocol") == "v2" and isinstance(raw, list):
        item: dict[str, object] = {}
        for tensor in raw:
            data = tensor.get("data") if isinstance(tensor, dict) else None
            if data is None or data == REDACTED:
                return None
            item[str(tensor["name"])] = np.asarray(data).reshape(tensor.get("shape") or -1).tolist()
        return item
    if not isinstance(raw, dict) or REDACTED in raw.values():
        return None
    return raw


def expected_of(record: dict[str, Any]) -> dict[str, object]:
    """What the captured answer said: its prediction (v1) and outputs by name."""
    outputs = record.get("outputs")
    if isinstance(outputs, list):  # v2: a list of output tensors
        outputs = {
            str(t["name"]): np.asarray(t["data"]).reshape(t.get("shape") or -1).tolist()
            for t in outputs
            if isinstance(t, dict) and "data" in t
        }
    return {
        "prediction": record.get("prediction"),
        "outputs": outputs or {},
        "request_id": record.get("request_id"),
        "timestamp": record.get("timestamp"),
    }


def _numbers(value: object) -> np.ndarray[Any, Any] | None:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.size else None


def compare(expected: list[dict[str, Any]], got: list[dict[str, Any]], skipped: int = 0) -> ReplayComparison:
    """Item by item (by ``index``): equal or differing prediction (outputs when no prediction was captured),
    and the mean absolute difference over every numeric output element both answers have."""
    by_index = {int(r["index"]): r for r in got if "index" in r}
    equal = differing = failed = 0
    diffs: list[float] = []
    examples: list[ReplayDifference] = []
    for index, want in enumerate(expected):
        row = by_index.get(index)
        if row is None or "error" in row:
            failed += 1
            continue
        outputs = row.get("outputs") or {}
        close = True  # every captured output present, numeric ones within float noise
        for name, value in (want["outputs"] or {}).items():
            a, b = _numbers(value), _numbers(outputs.get(name))
            if a is not None and b is not None and a.shape == b.shape:
                diffs.extend(np.abs(a - b).reshape(-1).tolist())
                close = close and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))
            else:
                close = close and outputs.get(name) == value
        same = row.get("prediction") == want["prediction"] if want["prediction"] is not None else close
        equal, differing = equal + int(same), differing + int(not same)
        if not same and len(examples) < MAX_EXAMPLES:
            examples.append(
                {
                    "index": index,
                    "request_id": want.get("request_id"),
                    "captured": want["prediction"] if want["prediction"] is not None else want["outputs"],
                    "replayed": row.get("prediction") if want["prediction"] is not None else outputs,
                }
            )
    mean = round(float(np.mean(diffs)), 9) if diffs else None
    return {
        "compared": equal + differing,
        "equal": equal,
        "differing": differing,
        "failed": failed,
        "mean_abs_diff": mean,
        "skipped": skipped,
        "differences": examples,
    }


class Replays:
    """Builds replay jobs from captured traffic and compares their answers once finished."""

    def __init__(self, jobs: BatchJobs, s3: Any, settings: Settings) -> None:
        self.jobs = jobs
        self.s3 = s3
        self.settings = settings

    def submit(self, body: object, owner: str) -> JobSummary:
        """A POST /v1/batch body with ``from_capture``: write the replay's inputs, submit them on ``version``."""
        request = v.require_object(body)
        v.reject_unknown(request, ("from_capture", "version", "model"))
        name, version, since, until = parse_window(request["from_capture"])
        if request.get("model") not in (None, name):
            raise InvalidInput("model must be from_capture.model (or left out)", field="model")
        inputs, expected, skipped = self._captured(name, version, since, until)
        if not inputs:
            where = f"{name}/{version}" if version else name
            raise InvalidInput(
                f"no replayable captured requests of {where} between {since.isoformat()} and {until.isoformat()} "
                f"({skipped} redacted, binary or failed ones skipped); is capture on (kinfer capture get {name})?",
                field="from_capture",
            )
        bucket, prefix = self.settings.s3_input_bucket, f"{REPLAY}{uuid.uuid4().hex}/"
        self.jobs.ensure_buckets()
        storage.put_bytes(self.s3, bucket, prefix + "inputs.jsonl", _lines(inputs), storage.JSONL_TYPE)
        storage.put_bytes(self.s3, bucket, prefix + "expected.jsonl", _lines(expected), storage.JSONL_TYPE)
        meta = {"skipped": skipped, "model": name, "version": version}
        storage.put_bytes(self.s3, bucket, prefix + "replay.json", orjson.dumps(meta), "application/json")
        submit: dict[str, object] = {"model": name, "input_url": f"s3://{bucket}/{prefix}inputs.jsonl"}
        if request.get("version") is not None:
            submit["version"] = request["version"]
        return self.jobs.submit_job(submit, owner, readable=(prefix,))

    def _captured(
        self, name: str, version: str | None, since: datetime, until: datetime
    ) -> tuple[list[object], list[dict[str, object]], int]:
        kept: list[tuple[str, object, dict[str, object]]] = []
        skipped = 0
        limit = self.settings.batch_max_items
        for record in self._records(name, version, since, until):
            item = replay_input(record) if record.get("outcome") == "ok" else None
            if item is None:
                skipped += 1
                continue
            if len(kept) >= limit:
                raise InvalidInput(
                    f"the window holds more than {limit} captured requests (BATCH_MAX_ITEMS); narrow it",
                    field="from_capture.until",
                )
            kept.append((str(record.get("timestamp")), item, expected_of(record)))
        kept.sort(key=lambda k: k[0])  # in the order the requests came (capture objects are not)
        return [k[1] for k in kept], [k[2] for k in kept], skipped

    def _records(self, name: str, version: str | None, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
        bucket = self.settings.capture_bucket
        prefix = f"{PREFIX}/{name}/" + (f"{version}/" if version else "")
        keys = storage.list_keys(self.s3, bucket, prefix, MAX_OBJECTS)
        if len(keys) > MAX_OBJECTS:
            raise InvalidInput(
                f"more than {MAX_OBJECTS} capture objects under s3://{bucket}/{prefix}; name a version",
                field="from_capture.version",
            )
        first = since.replace(minute=0, second=0, microsecond=0)
        for key in keys:
            hour = _hour_of(key)
            if hour is None or not first <= hour < until + timedelta(hours=1):
                continue
            for line in _object_lines(self.s3, bucket, key):
                record = orjson.loads(line)
                at = datetime.fromisoformat(str(record.get("timestamp")))
                if since <= at < until:
                    yield record

    # -- the comparison ------------------------------------------------------------------
    def annotate(self, job: BatchJob) -> BatchJob:
        """``job`` with ``comparison`` when it is a finished replay job (computed once, then kept)."""
        prefix = self._replay_prefix(job)
        if prefix is None or job["status"] not in store.FINISHED:
            return job
        bucket = self.settings.s3_input_bucket
        try:
            try:
                job["comparison"] = orjson.loads(storage.get_bytes(self.s3, bucket, prefix + "comparison.json"))
                return job
            except NotFound:
                pass
            lines = storage.get_bytes(self.s3, bucket, prefix + "expected.jsonl").splitlines()
            expected = [orjson.loads(x) for x in lines if x.strip()]
            meta = orjson.loads(storage.get_bytes(self.s3, bucket, prefix + "replay.json"))
            got = storage.get_jsonl(self.s3, self.settings.s3_results_bucket, batch_results.results_key(job["id"]))
        except KinferError as exc:
            log.warning("replay job %s: comparison not available: %s", job["id"], exc.message)
            return job
        comparison = compare(expected, got, int(meta.get("skipped", 0)))
        storage.put_bytes(self.s3, bucket, prefix + "comparison.json", orjson.dumps(comparison), "application/json")
        job["comparison"] = comparison
        return job

    def _replay_prefix(self, job: BatchJob) -> str | None:
        url = job.get("input_url") or ""
        start = f"s3://{self.settings.s3_input_bucket}/{REPLAY}"
        if not url.startswith(start) or not url.endswith("/inputs.jsonl"):
            return None
        return url[len(f"s3://{self.settings.s3_input_bucket}/") : -len("inputs.jsonl")]


def _lines(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)


def _object_lines(s3: Any, bucket: str, key: str) -> list[bytes]:
    import gzip

    data = storage.get_bytes(s3, bucket, key)
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    return [line for line in data.splitlines() if line.strip()]
