"""``GET /v1/backends``: each Triton backend at a glance, for people (the console) rather than Prometheus.

Per backend: its circuit breaker, its last probe (``monitor.health``: probed now when stale), and
what its requests did over a recent window: requests per second and the median latency. The
request counters are cumulative Redis hashes (``shared.backends.metrics``), so a window needs an
earlier reading: every read of this overview keeps a snapshot of the counters in Redis (at most one
per ``SNAPSHOT_EVERY_S``, the newest ``MAX_SNAPSHOTS``) and compares the counters now with the oldest
snapshot inside the window (or, when none is, the newest before it: ``window_s`` of the answer says
what was covered). Without an earlier snapshot, or with Redis down, rate and p50 are null.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, TypedDict, cast

from shared.backends.metrics import BUCKETS, read_counters

if TYPE_CHECKING:
    from shared.backends.monitor import BackendMonitor
    from shared.clients.cache import Cache

log = logging.getLogger(__name__)

SNAPSHOTS_KEY = "kinfer:metrics:snapshots"
SNAPSHOT_LOCK_KEY = "kinfer:metrics:snapshot-lock"
SNAPSHOT_EVERY_S = 5
MAX_SNAPSHOTS = 120  # ten minutes at one per SNAPSHOT_EVERY_S while someone watches
MAX_WINDOW_S = 600
DEFAULT_WINDOW_S = 300
MIN_SPAN_S = 1.0


class Counters(TypedDict):
    """The cumulative request counters per backend: outcomes, and the latency histogram."""

    requests: dict[str, dict[str, int]]  # {url: {outcome: n}}
    latency: dict[str, list[float]]  # {url: [count per bucket]}


class Snapshot(Counters):
    """``Counters`` kept in Redis at epoch second ``t``."""

    t: float


class BackendRow(TypedDict):
    """One backend in ``GET /v1/backends``."""

    url: str
    circuit: str
    failures: int
    healthy: bool | None
    last_probe: str | None
    probe_ms: float | None
    reason: str | None
    state: str | None  # behind an activator (scale to zero): serving, waking, idle-stopped, stopping
    state_since: str | None
    wake_estimate_s: float | None  # while waking: how long the last wake took
    models: list[str]
    requests: dict[str, int]
    p50_ms: float | None
    requests_per_s: float | None


class Overview(TypedDict):
    """``GET /v1/backends``."""

    window_s: float | None
    backends: list[BackendRow]


def redacted(row: BackendRow) -> BackendRow:
    """A row for a key without the admin scope: no backend address (an opaque, stable name instead) and no
    probe reason (it can carry what the backend said); circuit, health, rate and latency stay."""
    name = "backend-" + hashlib.sha256(row["url"].encode()).hexdigest()[:12]
    return {**row, "url": name, "reason": None}


def median_ms(counts: list[float]) -> float | None:
    """The median of a latency histogram (counts per ``BUCKETS`` bucket, +Inf last), interpolated within
    its bucket as Prometheus' histogram_quantile does; None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank, running = total / 2, 0.0
    for i, count in enumerate(counts):
        if count > 0 and running + count >= rank:
            if i >= len(BUCKETS):
                return BUCKETS[-1] * 1000
            lower = BUCKETS[i - 1] if i else 0.0
            return round((lower + (BUCKETS[i] - lower) * (rank - running) / count) * 1000, 3)
        running += count
    return None


def _minus(now: list[float], before: list[float]) -> list[float]:
    return [max(0.0, n - (before[i] if i < len(before) else 0.0)) for i, n in enumerate(now)]


class BackendOverview:
    """The ``GET /v1/backends`` overview: probes and breakers from the monitor, rates from Redis snapshots."""

    def __init__(self, monitor: BackendMonitor, cache: Cache) -> None:
        self.monitor = monitor
        self.cache = cache

    def overview(self, window_s: float = DEFAULT_WINDOW_S) -> Overview:
        """{"window_s", "backends": [{url, circuit, failures, healthy, last_probe, ..., p50_ms, requests_per_s}]}."""
        health = self.monitor.health()
        models = self.monitor.backend_models()
        counters = self._counters()
        now = time.time()
        base = self._baseline(now, window_s) if counters is not None else None
        covered = max(now - base["t"], 1e-3) if base else None
        rows: list[BackendRow] = []
        for b in health["backends"]:
            url = b["url"]
            row: BackendRow = {
                "url": url,
                "circuit": b["circuit"],
                "failures": b["failures"],
                "healthy": b["healthy"] if b["last_checked"] else None,
                "last_probe": b["last_checked"],
                "probe_ms": b["latency_ms"],
                "reason": b.get("reason"),
                "state": b["state"],
                "state_since": b["state_since"],
                "wake_estimate_s": b["wake_estimate_s"],
                "models": models.get(url, []),
                "requests": counters["requests"].get(url, {}) if counters else {},
                "p50_ms": None,
                "requests_per_s": None,
            }
            if counters is not None and base is not None and covered:
                total = sum(counters["requests"].get(url, {}).values())
                before = sum(base["requests"].get(url, {}).values())
                row["requests_per_s"] = round(max(0, total - before) / covered, 3)
                row["p50_ms"] = median_ms(_minus(counters["latency"].get(url, []), base["latency"].get(url, [])))
            rows.append(row)
        if counters is not None:
            self._snapshot(counters, now)
        return {"window_s": round(covered, 3) if covered else None, "backends": rows}

    def _counters(self) -> Counters | None:
        """{"requests": {url: {outcome: n}}, "latency": {url: [count per bucket]}} from Redis; None when down."""
        if not self.cache.available():
            return None
        try:
            requests, latency, _ = read_counters(self.cache.client)
        except Exception as exc:  # redis errors: the overview still answers breakers and probes
            log.warning("could not read backend counters: %s", type(exc).__name__)
            return None
        by_url: dict[str, dict[str, int]] = {}
        for field, count in requests.items():
            url, _, outcome = field.rpartition("|")
            by_url.setdefault(url, {})[outcome] = count
        buckets: dict[str, list[float]] = {}
        for field, value in latency.items():
            url, _, part = field.rpartition("|")
            if part.isdigit() and int(part) <= len(BUCKETS):
                buckets.setdefault(url, [0.0] * (len(BUCKETS) + 1))[int(part)] = value
        return {"requests": by_url, "latency": buckets}

    def _baseline(self, now: float, window_s: float) -> Snapshot | None:
        """The oldest snapshot within the window (and at least ``MIN_SPAN_S`` old), else the newest one before
        the window (no one watched since: a longer span, said in ``window_s``), else None."""
        try:
            raw = self.cache.client.lrange(SNAPSHOTS_KEY, 0, MAX_SNAPSHOTS - 1)
        except Exception as exc:  # redis errors
            log.warning("could not read metric snapshots: %s", type(exc).__name__)
            return None
        snapshots = [cast(Snapshot, json.loads(item)) for item in raw]  # newest first
        inside = [s for s in snapshots if now - window_s <= s["t"] <= now - MIN_SPAN_S]
        if inside:
            return inside[-1]
        return next((s for s in snapshots if s["t"] < now - window_s), None)

    def _snapshot(self, counters: Counters, now: float) -> None:
        """Keep ``counters`` as a snapshot, at most one per SNAPSHOT_EVERY_S across every process."""
        try:
            client = self.cache.client
            if not client.set(SNAPSHOT_LOCK_KEY, b"1", nx=True, ex=SNAPSHOT_EVERY_S):
                return
            pipe = client.pipeline(transaction=False)
            pipe.lpush(SNAPSHOTS_KEY, json.dumps({"t": now, **counters}))
            pipe.ltrim(SNAPSHOTS_KEY, 0, MAX_SNAPSHOTS - 1)
            pipe.execute()
        except Exception as exc:  # redis errors: no snapshot this time
            log.warning("could not record a metric snapshot: %s", type(exc).__name__)
