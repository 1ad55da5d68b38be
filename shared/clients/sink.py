"""CloudEvents out: ``emit`` POSTs one event to K_SINK (a KafkaSink in production).

Events leave in binary content mode (``ce-*`` headers, JSON body) over one
keep-alive ``requests.Session``; the sink's answer is translated once: unreachable,
5xx or 429 -> ``Unavailable`` (retryable), any other non-2xx -> ``BackendError``.
The current OpenTelemetry context travels as the ``traceparent`` extension.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from opentelemetry import propagate
from requests.adapters import HTTPAdapter

from shared.errors import BackendError, Unavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = (2.0, 10.0)  # connect, read

_session_lock = threading.Lock()
_session: requests.Session | None = None


def http_session(pool_size: int = 32) -> requests.Session:
    """The process's keep-alive session for event POSTs (created on first use)."""
    global _session
    with _session_lock:
        if _session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _session = session
        return _session


def _sink_url(settings_or_sink_url: Settings | str) -> str:
    url = settings_or_sink_url if isinstance(settings_or_sink_url, str) else settings_or_sink_url.k_sink
    if not url:
        raise Unavailable("no event sink configured (K_SINK is empty)")
    return url


def current_traceparent() -> str | None:
    """The W3C traceparent of the active OpenTelemetry context, if any."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def build_event(
    *,
    type: str,
    source: str,
    subject: str | None,
    data: Mapping[str, object],
    extensions: Mapping[str, object] | None = None,
    id: str | None = None,
) -> CloudEvent:
    """A CloudEvent with JSON data, the current traceparent and any ``extensions``."""
    attributes: dict[str, str] = {"type": type, "source": source, "datacontenttype": "application/json"}
    if subject:
        attributes["subject"] = subject
    if id:
        attributes["id"] = id
    traceparent = current_traceparent()
    if traceparent:
        attributes["traceparent"] = traceparent
    for name, value in (extensions or {}).items():
        attributes[name.lower()] = str(value)
    return CloudEvent(attributes, data)


def emit(
    settings_or_sink_url: Settings | str,
    *,
    type: str,
    source: str,
    subject: str | None,
    data: Mapping[str, object],
    extensions: Mapping[str, object] | None = None,
    session: requests.Session | None = None,
    id: str | None = None,
    timeout_s: float | None = None,
) -> None:
    """POST one CloudEvent in binary mode to K_SINK; Unavailable/BackendError on failure.

    ``timeout_s`` bounds the connect and the read (default ``TIMEOUT_S``): a caller with a deadline
    passes what is left of it.
    """
    url = _sink_url(settings_or_sink_url)
    event = build_event(type=type, source=source, subject=subject, data=data, extensions=extensions, id=id)
    headers, body = to_binary(event)
    timeout = TIMEOUT_S if timeout_s is None else (min(TIMEOUT_S[0], timeout_s), min(TIMEOUT_S[1], timeout_s))
    try:
        resp = (session or http_session()).post(url, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise Unavailable("event sink unreachable", retry_after=1) from exc
    if resp.status_code >= 500 or resp.status_code == 429:
        raise Unavailable(f"event sink answered {resp.status_code}", retry_after=1)
    if not 200 <= resp.status_code < 300:
        raise BackendError(f"event sink rejected the event with {resp.status_code}")
