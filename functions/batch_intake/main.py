"""The batch intake function: a batch-request CloudEvent or an S3 object-created notification creates a job."""

from __future__ import annotations

import functions_framework.aio
from cloudevents.http import CloudEvent
from starlette.requests import Request
from starlette.responses import Response

from shared.batch.intake import IntakeAnswer
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.runtime import event_routes, function_services


def _intake(call: Call, event: CloudEvent) -> tuple[int, IntakeAnswer]:
    return 202, function_services().intake.intake(event)


ROUTES = event_routes(_intake)


@functions_framework.aio.http
async def intake_batch_request(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "batch-intake")
