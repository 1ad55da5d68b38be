"""Per-process start-up shared by every function: logging and tracing once, then the services; and the
routes of an event function (CloudEvents on ``POST /``, liveness and health)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping

from cloudevents.http import CloudEvent

from shared.logs import setup_logging
from shared.services import Services, get_services
from shared.telemetry import setup_tracing
from shared.web.request import Call
from shared.web.route import LIVEZ, Route
from shared.web.routing import Router

_ready = threading.Event()


def function_services() -> Services:
    """The process services, with logging and tracing installed on first call."""
    services = get_services()
    if not _ready.is_set():
        setup_logging(services.settings.service_name, services.settings.log_level)
        setup_tracing(services.settings)
        _ready.set()
    return services


def _health(call: Call) -> dict[str, str]:
    return {"status": "healthy", "service": function_services().settings.service_name}


EventAnswer = tuple[int, Mapping[str, object]]


def event_routes(handler: Callable[[Call, CloudEvent], EventAnswer | Awaitable[EventAnswer]]) -> Router:
    """An event function: ``handler(call, event)`` (in the thread pool, or on the loop when it is ``async``)
    for the CloudEvent POSTed to ``/``;
    ``GET /livez`` and ``GET /health`` answer 200."""
    return Router(
        [
            LIVEZ,
            Route("/health", ("GET",), _health, query=()),
            Route("/", ("POST",), handler, event=True, query=()),
        ]
    )
