"""Per-process start-up shared by every function: logging and tracing once, then the services."""

from __future__ import annotations

import threading

from shared.logs import setup_logging
from shared.services import Services, get_services
from shared.telemetry import setup_tracing

_ready = threading.Event()


def function_services() -> Services:
    """The process services, with logging and tracing installed on first call."""
    services = get_services()
    if not _ready.is_set():
        setup_logging(services.settings.service_name, services.settings.log_level)
        setup_tracing(services.settings)
        _ready.set()
    return services
