"""The batch dead-letter function: a chunk whose deliveries ran out has its items marked failed."""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.worker import fail_chunk
from shared.web.events import serve_event
from shared.web.runtime import function_services


@functions_framework.aio.http
async def fail_dead_chunk(request: Request) -> Response:
    return await serve_event(request, function_services(), "batch-deadletter", fail_chunk)
