"""The batch intake function: a batch-request CloudEvent or an S3 object-created notification creates a job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.intake import intake
from shared.web.events import serve_event
from shared.web.runtime import function_services

if TYPE_CHECKING:
    from shared.services import Services


def _intake(services: Services, event: Any) -> tuple[int, dict[str, Any]]:
    return 202, intake(services, event)


@functions_framework.aio.http
async def intake_batch_request(request: Request) -> Response:
    return await serve_event(request, function_services(), "batch-intake", _intake)
