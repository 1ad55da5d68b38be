"""The batch worker function: one ``dev.kinfer.batch.chunk.v1`` CloudEvent = one chunk to infer.

200 done or skipped (duplicate, cancelled job); 503 Triton/DB/S3 unavailable (redelivered);
400 malformed event and 422 unknown job (not retried).
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.worker import process_chunk
from shared.web.events import serve_event
from shared.web.runtime import function_services


@functions_framework.aio.http
async def process_batch_chunk(request: Request) -> Response:
    return await serve_event(request, function_services(), "batch-worker", process_chunk)
