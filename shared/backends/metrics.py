"""Per-backend request counters and latency histograms, counted in Redis, exposed by `backends`.

The infer function (any number of processes) adds to in-process tallies on the hot
path and flushes them to two Redis hashes at most once per ``FLUSH_S`` in one
pipeline, from whichever request thread finds the interval elapsed (no per-request
Redis round trip; a process that dies loses at most its last second). The backends
function's ``/metrics`` reads the hashes and the breaker keys at scrape time through
a prometheus-client custom collector, so the numbers are cluster-wide, not per pod.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

REQUESTS_KEY = "kinfer:metrics:requests"  # field "url|outcome" -> count
LATENCY_KEY = "kinfer:metrics:latency"  # field "url|<bucket index>" -> count, "url|sum" -> seconds
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_S = 1.0


class Recorder:
    """In-process tallies flushed to Redis; never raises into the request."""

    def __init__(self, cache: Any, flush_s: float = FLUSH_S, requests_key: str = REQUESTS_KEY,
                 latency_key: str = LATENCY_KEY) -> None:
        self.cache = cache
        self.requests_key, self.latency_key = requests_key, latency_key
        self.flush_s = flush_s
        self._lock = threading.Lock()
        self._requests: dict[str, int] = defaultdict(int)
        self._latency: dict[str, float] = defaultdict(float)
        self._next_flush = time.monotonic() + flush_s

    def record(self, url: str, outcome: str, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._requests[f"{url}|{outcome}"] += 1
            self._latency[f"{url}|{index}"] += 1
            self._latency[f"{url}|sum"] += seconds
            due = time.monotonic() >= self._next_flush
            if due:
                self._next_flush = time.monotonic() + self.flush_s
        if due:
            self.flush()

    def flush(self, quiet: bool = False) -> None:
        """Move the tallies to Redis in one pipeline; kept for the next flush if Redis is down."""
        with self._lock:
            requests, latency = dict(self._requests), dict(self._latency)
            self._requests.clear()
            self._latency.clear()
        if not requests or not self.cache.available():
            self._restore(requests, latency)
            return
        try:
            pipe = self.cache.client.pipeline(transaction=False)
            for field, count in requests.items():
                pipe.hincrby(self.requests_key, field, count)
            for field, value in latency.items():
                if field.endswith("|sum"):
                    pipe.hincrbyfloat(self.latency_key, field, value)
                else:
                    pipe.hincrby(self.latency_key, field, int(value))
            pipe.execute()
        except Exception as exc:  # redis errors: keep the counts for the next flush
            if not quiet:
                log.warning("could not flush backend metrics to redis: %s", type(exc).__name__)
            self._restore(requests, latency)

    def close(self) -> None:
        """Flush what is left (Services.close and process exit call this)."""
        self.flush(quiet=True)

    def _restore(self, requests: dict[str, int], latency: dict[str, float]) -> None:
        with self._lock:
            for k, n in requests.items():
                self._requests[k] += n
            for k, x in latency.items():
                self._latency[k] += x



# -- exposition (backends function) -------------------------------------------------------
def read_counters(client: Any, requests_key: str = REQUESTS_KEY,
                  latency_key: str = LATENCY_KEY) -> tuple[dict[str, int], dict[str, float]]:
    """The two hashes as {field: value}."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(requests_key)
    pipe.hgetall(latency_key)
    raw_req, raw_lat = pipe.execute()
    return ({k.decode(): int(v) for k, v in raw_req.items()},
            {k.decode(): float(v) for k, v in raw_lat.items()})


class BackendCollector:
    """prometheus-client collector reading breaker state and counters from Redis at scrape time."""

    def __init__(self, client: Any, urls: list[str], views: dict[str, Any], probes: dict[str, Any]) -> None:
        self.client, self.urls, self.views, self.probes = client, urls, views, probes

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from shared.backends.breaker import STATE_CODES

        state = GaugeMetricFamily("kinfer_circuit_state", "Circuit breaker state per Triton backend "
                                  "(0 closed, 1 half-open, 2 open)", labels=["backend"])
        failures = GaugeMetricFamily("kinfer_circuit_failures", "Consecutive failures counted by the breaker",
                                     labels=["backend"])
        healthy = GaugeMetricFamily("kinfer_backend_healthy", "Last probe result (1 ready, 0 not, -1 never probed)",
                                    labels=["backend"])
        for url in self.urls:
            view = self.views[url]
            state.add_metric([url], STATE_CODES.get(view.state, 0))
            failures.add_metric([url], view.failures)
            probe = self.probes.get(url)
            healthy.add_metric([url], -1 if probe is None else int(bool(probe.get("healthy"))))
        yield from (state, failures, healthy)
        requests, latency = read_counters(self.client)
        counter = CounterMetricFamily("kinfer_backend_requests", "Triton requests per backend and outcome",
                                      labels=["backend", "outcome"])
        for field, count in sorted(requests.items()):
            url, _, outcome = field.rpartition("|")
            counter.add_metric([url, outcome], count)
        yield counter
        yield _histogram(latency)


def _histogram(latency: dict[str, float], name: str = "kinfer_backend_request_duration_seconds",
               doc: str = "Triton request latency per backend", labels: tuple[str, ...] = ("backend",)) -> Any:
    """A histogram family from "<labels joined by |>|<bucket index or sum>" fields."""
    from prometheus_client.core import HistogramMetricFamily

    hist = HistogramMetricFamily(name, doc, labels=list(labels))
    per_url: dict[str, dict[str, float]] = defaultdict(dict)
    for field, value in latency.items():
        url, _, part = field.rpartition("|")
        per_url[url][part] = value
    for url, parts in sorted(per_url.items()):
        running, buckets = 0.0, []
        for i, bound in enumerate((*BUCKETS, float("inf"))):
            running += parts.get(str(i), 0.0)
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        hist.add_metric(url.split("|", len(labels) - 1), buckets, parts.get("sum", 0.0))
    return hist
