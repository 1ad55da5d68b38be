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
