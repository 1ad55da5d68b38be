"""The batch event types. Versioned: a new shape gets a new type, so old and new workers can coexist."""

from __future__ import annotations

CHUNK_EVENT_TYPE = "dev.kinfer.batch.chunk.v1"
REQUEST_EVENT_TYPE = "dev.kinfer.batch.request.v1"
