"""Per-backend request counters, latency and rows-per-request histograms, counted in Redis,
exposed by `backends`.

The infer function (any number of processes) adds to in-process tallies on the hot
path and flushes them to Redis hashes at most once per ``FLUSH_S`` in one pipeline,
from whichever request finds the interval elapsed, or from a timer armed by the first
tally after a flush, so the last requests before a quiet spell are counted too (off the
event loop when there is one; no per-request Redis round trip; a process that dies loses
at most its last second). The backends function's ``/metrics`` reads the hashes and the breaker keys
at scrape time through a prometheus-client custom collector, so the numbers are
cluster-wide, not per pod. ``kinfer_backend_request_rows`` counts the rows of every
Triton inference request (coalesced real-time requests and batch sub-batches).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shared.clients.aio import TimedFlush

if TYPE_CHECKING:
    from shared.backends.breaker import CircuitView
    from shared.backends.monitor import ProbeResult

log = logging.getLogger(__name__)

REQUESTS_KEY = "kinfer:metrics:requests"  # field "url|outcome" -> count
LATENCY_KEY = "kinfer:metrics:latency"  # field "url|<bucket index>" -> count, "url|sum" -> seconds
ROWS_KEY = "kinfer:metrics:rows"  # field "url|<bucket index>" -> count, "url|sum" -> rows
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
FLUSH_S = 1.0


class Recorder(TimedFlush):
    """In-process tallies flushed to Redis; never raises into the request."""

    def __init__(
        self,
        cache: Any,
        flush_s: float = FLUSH_S,
        requests_key: str = REQUESTS_KEY,
        latency_key: str = LATENCY_KEY,
        rows_key: str = ROWS_KEY,
    ) -> None:
        self.keys = (requests_key, latency_key, rows_key)
        self.cache = cache
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._requests: dict[str, int] = defaultdict(int)
        self._latency: dict[str, float] = defaultdict(float)
        self._rows: dict[str, float] = defaultdict(float)
        self._fields: dict[tuple[str, str, int], tuple[str, str, str]] = {}  # hash field names, made once
        self._next_flush = time.monotonic() + flush_s
        self._armed = False  # a timer will flush what is pending

    def record(self, url: str, outcome: str, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        fields = self._fields.get((url, outcome, index))
        if fields is None:
            fields = self._fields[(url, outcome, index)] = (f"{url}|{outcome}", f"{url}|{index}", f"{url}|sum")
        with self._lock:
            self._requests[fields[0]] += 1
            self._latency[fields[1]] += 1
            self._latency[fields[2]] += seconds
        if time.monotonic() >= self._next_flush:
            self._maybe_flush()
        elif not self._armed:
            self._arm()

    def record_rows(self, url: str, rows: int) -> None:
        """One Triton inference request of ``rows`` rows."""
        index = bisect.bisect_left(ROW_BUCKETS, rows)
        with self._lock:
            self._rows[f"{url}|{index}"] += 1
            self._rows[f"{url}|sum"] += rows
        if not self._armed:
            self._arm()

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now < self._next_flush:
            return
        self._next_flush = now + self.flush_s
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:  # the event loop never waits for Redis
            loop.run_in_executor(None, self.flush)

    def flush(self, quiet: bool = False) -> None:
        """Move the tallies to Redis in one pipeline; kept for the next flush if Redis is down."""
        with self._lock:
            tallies: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = (
                dict(self._requests),
                dict(self._latency),
                dict(self._rows),
            )
            self._requests.clear()
            self._latency.clear()
            self._rows.clear()
        if not any(tallies) or not self.cache.available():
            self._restore(*tallies)
            return
        try:
            pipe = self.cache.client.pipeline(transaction=False)
            for key, values in zip(self.keys, tallies, strict=True):
                for field, value in values.items():
                    if key == self.keys[1] and field.endswith("|sum"):
                        pipe.hincrbyfloat(key, field, value)
                    else:
                        pipe.hincrby(key, field, int(value))
            pipe.execute()
        except Exception as exc:  # redis errors: keep the counts for the next flush
            if not quiet:
                log.warning("could not flush backend metrics to redis: %s", type(exc).__name__)
            self._restore(*tallies)

    def close(self) -> None:
        """Flush what is left (Services.close and process exit call this)."""
        self.flush(quiet=True)

    def _restore(self, requests: dict[str, int], latency: dict[str, float], rows: dict[str, float]) -> None:
        with self._lock:
            for k, n in requests.items():
                self._requests[k] += n
            for k, x in latency.items():
                self._latency[k] += x
            for k, x in rows.items():
                self._rows[k] += x


# -- exposition (backends function) -------------------------------------------------------
def read_counters(
    client: Any, requests_key: str = REQUESTS_KEY, latency_key: str = LATENCY_KEY, rows_key: str = ROWS_KEY
) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    """The three hashes (requests, latency, rows) as {field: value}."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(requests_key)
    pipe.hgetall(latency_key)
    pipe.hgetall(rows_key)
    raw_req, raw_lat, raw_rows = pipe.execute()
    return (
        {k.decode(): int(v) for k, v in raw_req.items()},
        {k.decode(): float(v) for k, v in raw_lat.items()},
        {k.decode(): float(v) for k, v in raw_rows.items()},
    )


class BackendCollector:
    """prometheus-client collector reading breaker state and counters from Redis at scrape time."""

    def __init__(
        self, client: Any, urls: list[str], views: Mapping[str, CircuitView], probes: Mapping[str, ProbeResult]
    ) -> None:
        self.client, self.urls, self.views, self.probes = client, urls, views, probes

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from shared.backends.breaker import STATE_CODES

        state = GaugeMetricFamily(
            "kinfer_circuit_state",
            "Circuit breaker state per Triton backend (0 closed, 1 half-open, 2 open)",
            labels=["backend"],
        )
        failures = GaugeMetricFamily(
            "kinfer_circuit_failures", "Consecutive failures counted by the breaker", labels=["backend"]
        )
        healthy = GaugeMetricFamily(
            "kinfer_backend_healthy", "Last probe result (1 ready, 0 not, -1 never probed)", labels=["backend"]
        )
        for url in self.urls:
            view = self.views[url]
            state.add_metric([url], STATE_CODES.get(view.state, 0))
            failures.add_metric([url], view.failures)
            probe = self.probes.get(url)
            healthy.add_metric([url], -1 if probe is None else int(bool(probe.get("healthy"))))
        yield from (state, failures, healthy)
        requests, latency, rows = read_counters(self.client)
        counter = CounterMetricFamily(
            "kinfer_backend_requests", "Triton requests per backend and outcome", labels=["backend", "outcome"]
        )
        for field, count in sorted(requests.items()):
            url, _, outcome = field.rpartition("|")
            counter.add_metric([url, outcome], count)
        yield counter
        yield _histogram(
            "kinfer_backend_request_duration_seconds", "Triton request latency per backend", latency, BUCKETS
        )
        yield _histogram(
            "kinfer_backend_request_rows",
            "Rows per Triton inference request (coalesced real-time requests, batch sub-batches)",
            rows,
            ROW_BUCKETS,
        )


def _histogram(
    name: str,
    documentation: str,
    tallies: dict[str, float],
    bounds: tuple[float, ...],
    labels: tuple[str, ...] = ("backend",),
) -> Any:
    """A histogram family from "<labels joined by |>|<bucket index or sum>" fields."""
    from prometheus_client.core import HistogramMetricFamily

    hist = HistogramMetricFamily(name, documentation, labels=list(labels))
    per_url: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in tallies.items():
        url, _, part = field.rpartition("|")
        per_url[url][part] = value
    for url, parts in sorted(per_url.items()):
        running, buckets = 0.0, []
        for i, bound in enumerate((*bounds, float("inf"))):
            running += parts.get(str(i), 0.0)
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        hist.add_metric(url.split("|", len(labels) - 1), buckets, parts.get("sum", 0.0))
    return hist
