"""The batch event types. Versioned: a new shape gets a new type, so old and new workers can coexist."""

from __future__ import annotations

from typing import TypedDict

CHUNK_EVENT_TYPE = "dev.kinfer.batch.chunk.v1"
REQUEST_EVENT_TYPE = "dev.kinfer.batch.request.v1"


class ChunkEventData(TypedDict):
    """The data of a ``dev.kinfer.batch.chunk.v1`` event: one chunk input object of a job."""

    job_id: str
    chunk: int
    start: int
    count: int
    bucket: str
    key: str
    model: str
    version: str
    model_id: str


# Async inference (``Prefer: respond-async``, shared.batch.requests): run one stored request; then deliver its
# outcome to the request's callback_url. Both travel the chunk topic to the batch worker.
INFER_REQUEST_EVENT_TYPE = "dev.kinfer.infer.request.v1"
INFER_CALLBACK_EVENT_TYPE = "dev.kinfer.infer.callback.v1"


class InferEventData(TypedDict):
    """The data of both async inference events: the stored request's id."""

    request_id: str
