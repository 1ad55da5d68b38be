"""Batch intake from events: a batch-request CloudEvent or an S3/MinIO object-created notification.

- ``dev.kinfer.batch.request.v1``: data = the POST /v1/batch body; the job belongs to "anonymous".
  An event never names an owner (``owner`` is refused, 400): whoever can put an event on the topic is
  not thereby any API key, so a job for a key is submitted with that key (POST /v1/batch).
- S3 notification (S3 event JSON with ``Records[].s3.bucket.name``/``object.key``,
  as the event data itself or wrapped as Kafka record data by a KafkaSource): a
  ``.jsonl`` object in the input bucket under ``incoming/<model>/<file>.jsonl`` or
  ``incoming/<model>/<version>/<file>.jsonl`` becomes a job over ``s3://bucket/key``
  owned by "anonymous". Other buckets, prefixes and event names are ignored (200).

Each job is created by ``shared.batch.jobs.BatchJobs.submit_job``, idempotent on the event's
(source, id) (plus the record number): a redelivered event returns the same job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TypedDict, cast
from urllib.parse import unquote_plus

from shared.batch.events import REQUEST_EVENT_TYPE
from shared.domain import ANONYMOUS
from shared.errors import InvalidInput

if TYPE_CHECKING:
    from cloudevents.http import CloudEvent

    from shared.batch.jobs import BatchJobs, JobSummary
    from shared.settings import Settings

log = logging.getLogger(__name__)

INCOMING = "incoming/"


class IntakeAnswer(TypedDict):
    """The jobs an event created (or found, when redelivered) and why its other records were ignored."""

    jobs: list[JobSummary]
    ignored: list[str]


class _Named(TypedDict, total=False):
    name: object
    key: object


class _S3Entity(TypedDict, total=False):
    bucket: _Named | None
    object: _Named | None


class S3Record(TypedDict, total=False):
    """One record of an S3 event notification, as far as the intake reads it (untrusted: any key may be missing)."""

    eventName: object
    s3: _S3Entity | None


class BatchIntake:
    """Owns job creation from events: batch-request CloudEvents and S3 object-created notifications."""

    def __init__(self, jobs: BatchJobs, settings: Settings) -> None:
        self.jobs = jobs
        self.settings = settings

    def intake(self, event: CloudEvent) -> IntakeAnswer:
        """Create the job(s) an event asks for; ``{"jobs": [...], "ignored": [...]}``."""
        base_key = f"{event['source']}#{event['id']}"
        if event["type"] == REQUEST_EVENT_TYPE:
            return {"jobs": [self._request_job(event.data, base_key)], "ignored": []}
        records = _records(event.data)
        if records is None:
            raise InvalidInput(
                f"event type {event['type']!r} is neither {REQUEST_EVENT_TYPE} nor an S3 object-created notification"
            )
        jobs: list[JobSummary] = []
        ignored: list[str] = []
        for number, record in enumerate(records):
            target = object_target(record, self.settings.s3_input_bucket)
            if isinstance(target, str):
                ignored.append(target)
                continue
            body: dict[str, str] = {"model": target[2], "input_url": f"s3://{target[0]}/{target[1]}"}
            if target[3]:
                body["version"] = target[3]
            jobs.append(self.jobs.submit_job(body, ANONYMOUS, intake_key=f"{base_key}#{number}", readable=(INCOMING,)))
        return {"jobs": jobs, "ignored": ignored}

    def _request_job(self, data: object, intake_key: str) -> JobSummary:
        if not isinstance(data, dict):
            raise InvalidInput("batch request event data must be a JSON object (the POST /v1/batch body)")
        if "owner" in data:
            log.warning("batch request event refused: it names an owner (%r)", str(data["owner"])[:64])
            raise InvalidInput(
                "an event cannot name the owner of a job: jobs created from events belong to 'anonymous'; "
                "submit with the key that should own it (POST /v1/batch)",
                field="owner",
            )
        return self.jobs.submit_job(dict(data), ANONYMOUS, intake_key=intake_key, readable=(INCOMING,))


def _records(data: object) -> list[S3Record] | None:
    """The S3 event records of ``data`` (bare, or as the value of a Kafka record); None otherwise."""
    if isinstance(data, dict) and isinstance(data.get("value"), dict):
        data = data["value"]  # some KafkaSource encodings wrap the record value
    if isinstance(data, dict) and isinstance(data.get("Records"), list):
        return [cast(S3Record, r) for r in data["Records"] if isinstance(r, dict)]
    return None


def object_target(record: S3Record, input_bucket: str) -> tuple[str, str, str, str | None] | str:
    """(bucket, key, model, version) for a job-worthy record, else why it is ignored."""
    name = str(record.get("eventName", ""))
    s3 = record.get("s3") or {}
    bucket = str((s3.get("bucket") or {}).get("name", ""))
    key = unquote_plus(str((s3.get("object") or {}).get("key", "")))
    if "ObjectCreated" not in name:
        return f"{name or 'unnamed event'} is not an object creation"
    if bucket != input_bucket or not key.startswith(INCOMING) or not key.endswith(".jsonl"):
        return f"s3://{bucket}/{key} is not incoming/<model>/[<version>/]<file>.jsonl in {input_bucket}"
    parts = key[len(INCOMING) :].split("/")
    if len(parts) == 2 and parts[0]:
        return bucket, key, parts[0], None
    if len(parts) == 3 and parts[0] and parts[1]:
        return bucket, key, parts[0], parts[1]
    return f"s3://{bucket}/{key} is not incoming/<model>/[<version>/]<file>.jsonl"
