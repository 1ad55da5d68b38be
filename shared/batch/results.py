"""Where batch data lives in S3, and the merge of chunk results into one results object.

Chunk inputs: ``<input bucket>/batch-inputs/<job>/chunk-NNNNN.jsonl`` (one input per line).
Chunk results: ``<results bucket>/batch-results/<job>/chunk-NNNNN.jsonl``.
Job results: ``<results bucket>/batch-results/<job>/results.jsonl``: one line per
input in input order, ``{"index", "prediction", "outputs"}`` or ``{"index", "error"}``.
The merge streams chunk objects into a multipart upload, reading a few ahead in
parallel, so its memory is bounded by one part plus those chunks, never by the job size.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import orjson

from shared.clients import storage
from shared.domain import JobError

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

# Multipart parts must be >= 5 MiB except the last; results up to a part are one PUT (a multipart upload is
# at least three requests, and the local S3 server spends twice the CPU on one).
PART_SIZE = 16 * 1024 * 1024
MERGE_AHEAD = 8


class ResultRow(TypedDict):
    """One results line: ``{"index", "prediction", "outputs"}`` or ``{"index", "error"}``."""

    index: int
    error: NotRequired[str]
    prediction: NotRequired[object]
    outputs: NotRequired[dict[str, object]]


class _Part(TypedDict):
    ETag: str
    PartNumber: int


def input_key(job_id: object, chunk: int) -> str:
    return f"batch-inputs/{job_id}/chunk-{chunk:05d}.jsonl"


def chunk_result_key(job_id: object, chunk: int) -> str:
    return f"batch-results/{job_id}/chunk-{chunk:05d}.jsonl"


def results_key(job_id: object) -> str:
    return f"batch-results/{job_id}/results.jsonl"


def encode_lines(rows: Iterable[object]) -> bytes:
    """JSON Lines bytes of ``rows`` (compact, UTF-8; NaN and infinities as null; a lone surrogate in a
    string, which orjson refuses, stays a ``\\udXXX`` escape)."""
    return b"".join(_line(row) for row in rows)


def _line(row: object) -> bytes:
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        return encode_value(row) + b"\n"


def encode_value(value: object) -> bytes:
    """One JSON value as ``encode_lines`` writes it, without the newline."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
        return text.encode("utf-8", "backslashreplace")


def error_line(index: int, error: str) -> bytes:
    """The result line of a failed item."""
    return _line({"index": index, "error": error})


@dataclass
class ChunkLines:
    """A chunk's results as JSON Lines (input order) and what they count: ``errors`` is the first
    ``ERROR_SAMPLE`` failed items."""

    data: bytes
    succeeded: int
    failed: int
    errors: list[JobError]

    @classmethod
    def of_rows(cls, rows: list[ResultRow], sample: int) -> ChunkLines:
        errors = [JobError(index=r["index"], error=r["error"]) for r in rows if "error" in r]
        return cls(encode_lines(rows), len(rows) - len(errors), len(errors), errors[:sample])

    @classmethod
    def joined(cls, parts: list[ChunkLines], sample: int) -> ChunkLines:
        """Consecutive parts of a chunk as one."""
        if len(parts) == 1:
            return parts[0]
        errors = [e for p in parts for e in p.errors][:sample]
        return cls(
            b"".join(p.data for p in parts), sum(p.succeeded for p in parts), sum(p.failed for p in parts), errors
        )


class BatchResults:
    """Owns the batch objects in S3: chunk results, their merge into the job's results, presigned results URLs."""

    def __init__(self, s3: Any, s3_presigner: Any, settings: Settings) -> None:
        self.s3 = s3
        self.s3_presigner = s3_presigner
        self.settings = settings

    def put_lines(self, bucket: str, key: str, data: bytes) -> None:
        storage.put_bytes(self.s3, bucket, key, data, storage.JSONL_TYPE)

    def merge_chunks(self, job_id: object, chunks: Iterable[int]) -> str:
        """Concatenate the results of ``chunks`` (in order) into the job's results object; its key.

        Up to ``MERGE_AHEAD`` chunk objects are read ahead in parallel (in order), so memory stays
        bounded by a part plus those chunks.
        """
        bucket, key = self.settings.s3_results_bucket, results_key(job_id)
        upload = _Upload(self.s3, bucket, key)
        try:
            with ThreadPoolExecutor(MERGE_AHEAD, thread_name_prefix="batch-merge") as pool:
                ahead: deque[Future[bytes]] = deque()
                for chunk in chunks:
                    ahead.append(pool.submit(storage.get_bytes, self.s3, bucket, chunk_result_key(job_id, chunk)))
                    if len(ahead) >= MERGE_AHEAD:
                        upload.write(ahead.popleft().result())
                while ahead:
                    upload.write(ahead.popleft().result())
            upload.close()
        except BaseException:
            upload.abort()
            raise
        return key

    def presigned_results(self, key: str) -> str:
        """A GET URL for clients: presigned for S3_PUBLIC_ENDPOINT_URL when set (SigV4 binds the host)."""
        settings = self.settings
        return storage.presign_get(self.s3_presigner, settings.s3_results_bucket, key, settings.result_url_expiry_s)

    def delete_job_objects(self, job_id: object) -> None:
        """Best-effort removal of a job's chunk inputs (after a failed submit)."""
        try:
            storage.delete_prefix(self.s3, self.settings.s3_input_bucket, f"batch-inputs/{job_id}/")
        except Exception:  # noqa: BLE001 - cleanup must not mask the original failure
            log.warning("could not delete the inputs of batch job %s", job_id)


class _Upload:
    """One object written in PART_SIZE pieces: a plain put when it fits in one part."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[_Part] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= PART_SIZE:
            self._flush()

    def _flush(self) -> None:
        with storage.translated(f"s3://{self.bucket}/{self.key}"):
            if self.upload_id is None:
                self.upload_id = self.client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, ContentType=storage.JSONL_TYPE
                )["UploadId"]
            number = len(self.parts) + 1
            etag = self.client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=bytes(self.buffer)
            )["ETag"]
        self.parts.append({"ETag": etag, "PartNumber": number})
        self.buffer = bytearray()

    def close(self) -> None:
        if self.upload_id is None:
            storage.put_bytes(self.client, self.bucket, self.key, bytes(self.buffer), storage.JSONL_TYPE)
            return
        if self.buffer:
            self._flush()
        with storage.translated(f"s3://{self.bucket}/{self.key}"):
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
            )

    def abort(self) -> None:
        if self.upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except Exception:  # noqa: BLE001 - best effort; the lifecycle rule cleans up otherwise
                log.warning("could not abort the multipart upload of %s", self.key)
