"""The local stand-in for Knative PingSources: tick each one's sink on its schedule.

Reads PingSources from the same manifests as the relay. Schedules whose minute field
is ``*`` or ``*/N`` (the other fields ``*``) are supported, which covers an "every N
minutes" probe; any other schedule is refused with a clear error rather than ticked
at the wrong times.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

from shared.localstack.relay.wiring import WiringError, iter_manifests

log = logging.getLogger(__name__)

PING_TYPE = "dev.knative.sources.ping"


@dataclass(frozen=True)
class Ping:
    name: str
    namespace: str
    every_s: float
    url: str
    data: str
    content_type: str


def interval_of(schedule: str) -> float:
    """Seconds between ticks of a ``*/N * * * *`` (or ``* * * * *``) schedule."""
    fields = schedule.split()
    if len(fields) != 5 or any(f != "*" for f in fields[1:]):
        raise WiringError(f"PingSource schedule {schedule!r}: only '*/N * * * *' is supported locally")
    minute = fields[0]
    if minute == "*":
        return 60.0
    if minute.startswith("*/") and minute[2:].isdigit() and int(minute[2:]) > 0:
        return 60.0 * int(minute[2:])
    raise WiringError(f"PingSource schedule {schedule!r}: only '*/N * * * *' is supported locally")


def load_pings(directory: str | Path, targets: Mapping[str, str]) -> list[Ping]:
    pings = []
    for path, doc in iter_manifests(directory):
        if doc.get("kind") != "PingSource" or not str(doc.get("apiVersion", "")).startswith("sources.knative.dev/"):
            continue
        meta, spec = doc.get("metadata") or {}, doc.get("spec") or {}
        sink = str(((spec.get("sink") or {}).get("ref") or {}).get("name"))
        if sink not in targets:  # that Service does not run here: nothing to tick
            log.warning(
                "%s: PingSource %s sinks to %r, which has no target; not ticking it", path, meta.get("name"), sink
            )
            continue
        pings.append(
            Ping(
                name=str(meta.get("name")),
                namespace=str(meta.get("namespace") or "kinfer"),
                every_s=interval_of(str(spec.get("schedule", ""))),
                url=targets[sink],
                data=str(spec.get("data", "")),
                content_type=str(spec.get("contentType", "application/json")),
            )
        )
    return pings


class PingTicker:
    """One daemon thread ticking every PingSource; the first tick comes one interval after start."""

    def __init__(self, pings: list[Ping], session: requests.Session | None = None) -> None:
        self.pings = pings
        self.session = session or requests.Session()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.pings:
            self._thread = threading.Thread(target=self._run, name="ping-ticker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        due = {p.name: time.monotonic() + p.every_s for p in self.pings}
        while not self._stop.is_set():
            now = time.monotonic()
            for ping in self.pings:
                if now >= due[ping.name]:
                    due[ping.name] = now + ping.every_s
                    self.tick(ping)
            self._stop.wait(min(due.values()) - time.monotonic() if due else 1.0)

    def tick(self, ping: Ping) -> int | None:
        """POST one binary-mode ping event; the status, or None when the sink did not answer."""
        headers: dict[str, str] = {
            "ce-specversion": "1.0",
            "ce-id": uuid.uuid4().hex,
            "ce-type": PING_TYPE,
            "ce-source": f"/apis/v1/namespaces/{ping.namespace}/pingsources/{ping.name}",
            "ce-time": datetime.now(UTC).isoformat(),
            "Content-Type": ping.content_type,
        }
        try:
            status = self.session.post(ping.url, data=ping.data.encode(), headers=headers, timeout=30).status_code
        except requests.RequestException as exc:
            log.warning("ping %s: sink %s unreachable (%s)", ping.name, ping.url, type(exc).__name__)
            return None
        if status >= 300:
            log.warning("ping %s: sink %s answered %d", ping.name, ping.url, status)
        return status
