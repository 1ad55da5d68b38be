"""The batch API function (DESIGN.md section 3): submit, list, status and cancel batch jobs."""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from shared import batch, registry
from shared.http import LIVEZ, Call, Route, Router, dispatch
from shared.runtime import function_services


def _submit(call: Call) -> tuple[int, dict]:
    return 202, batch.submit_job(call.services, call.json(), batch.owner_of(call.principal))


def _list(call: Call) -> dict:
    return batch.list_jobs(call.services, call.request.args, batch.owner_of(call.principal))


def _get(call: Call, job_id: str) -> dict:
    return batch.get_job(call.services, job_id, batch.owner_of(call.principal))


def _cancel(call: Call, job_id: str) -> dict:
    return batch.cancel_job(call.services, job_id, batch.owner_of(call.principal))


def _health(call: Call) -> tuple[int, dict]:
    return registry.health(call.services)


ROUTES = Router([
    LIVEZ,
    Route("/health", ("GET",), _health),
    Route("/v1/batch", ("POST",), _submit, scope="batch"),
    Route("/v1/batch", ("GET",), _list, scope="batch"),
    Route("/v1/batch/<job_id>", ("GET",), _get, scope="batch"),
    Route("/v1/batch/<job_id>", ("DELETE",), _cancel, scope="batch"),
])


@functions_framework.http
def manage_batch_jobs(request: Request) -> Response:
    return dispatch(request, ROUTES, function_services(), "batch")
