"""Per-version request counters and latencies: which version of a model answered, how fast, how often.

The data plane records each answered request under (model, version that answered, outcome)
in an in-process tally flushed to Redis about once a second (the backends' ``Recorder``,
with its own keys); the backends function's ``/metrics`` renders them cluster-wide:
``kinfer_model_requests_total{model,version,outcome}`` and
``kinfer_model_request_duration_seconds{model,version}``. A canary's error rate and
latency are read side by side with the version it is compared against.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared.backends.metrics import BUCKETS, Recorder, _histogram, read_counters

REQUESTS_KEY = "kinfer:metrics:model_requests"  # "model|version|outcome" -> count
LATENCY_KEY = "kinfer:metrics:model_latency"  # "model|version|<bucket>" -> count, "model|version|sum" -> s
ROWS_KEY = "kinfer:metrics:model_rows"  # unused: rows are counted per backend, not per version


def make_recorder(cache: Any) -> Recorder:
    return Recorder(cache, requests_key=REQUESTS_KEY, latency_key=LATENCY_KEY, rows_key=ROWS_KEY)


def record(recorder: Recorder, model: str, version: str, outcome: str, seconds: float) -> None:
    recorder.record(f"{model}|{version}", outcome, seconds)


class VersionCollector:
    """prometheus-client collector of the per-version tallies, read from Redis at scrape time."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        requests, latency, _ = read_counters(self.client, REQUESTS_KEY, LATENCY_KEY, ROWS_KEY)
        counter = CounterMetricFamily(
            "kinfer_model_requests",
            "Inference requests per model version and outcome",
            labels=["model", "version", "outcome"],
        )
        for field, count in sorted(requests.items()):
            parts = field.split("|")
            if len(parts) == 3:
                counter.add_metric(parts, count)
        yield counter
        yield _histogram(
            "kinfer_model_request_duration_seconds",
            "Inference latency per model version (resolution to answer)",
            latency,
            BUCKETS,
            ("model", "version"),
        )
