"""The backends function: GET /health (backends and breakers), GET /metrics (backends and model
versions), the probe tick, and GET /v1/backends (public through the gateway, ``infer`` scope): each
backend's circuit, last probe, request rate and median latency (``shared.backends.overview``).

A Knative PingSource POSTs a CloudEvent (binary or structured mode) to ``/``; that
probes every Triton backend and records the results in Redis, and lets the rollout gates decide
(``shared.lifecycle.rollout``; they also tick every ROLLOUT_TICK_S while this function is up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared import validation as v
from shared.web import schemas as s
from shared.web.dispatch import dispatch
from shared.web.events import parse_event
from shared.web.request import Call
from shared.web.route import LIVEZ, QueryParam, Route
from shared.web.routing import Router
from shared.web.runtime import function_services

if TYPE_CHECKING:
    from shared.backends.monitor import HealthReport, ProbeResult
    from shared.backends.overview import Overview


class ProbeTick(TypedDict):
    """The answer to the probe tick (``POST /``)."""

    event_id: str
    probed: int
    healthy: int
    backends: list[ProbeResult]


def _probe(call: Call) -> ProbeTick:
    event = parse_event(call.headers, call.body)
    results = function_services().monitor.probe()
    function_services().rollouts.tick_safely()  # the rollout gates decide on the same tick (one leader)
    return {
        "event_id": event["id"],
        "probed": len(results),
        "healthy": sum(1 for r in results if r["healthy"]),
        "backends": results,
    }


def _health(call: Call) -> HealthReport:
    return function_services().monitor.health()


def _overview(call: Call) -> Overview:
    from shared.backends import overview

    window = v.integer(
        call.query("window_s"), "window_s", default=overview.DEFAULT_WINDOW_S, lo=10, hi=overview.MAX_WINDOW_S
    )
    found = function_services().overview.overview(window)
    if call.principal is not None and not call.principal.allows("admin"):
        found["backends"] = [overview.redacted(b) for b in found["backends"]]
    return found


def _metrics(call: Call) -> Response:
    from shared import telemetry
    from shared.lifecycle.metrics import VersionCollector
    from shared.lifecycle.shadow import ShadowCollector

    own = telemetry.metrics().registry  # this process's counters, as on every function's /metrics
    text, content_type = function_services().monitor.metrics_text(
        (VersionCollector(function_services().cache.client), ShadowCollector(function_services().cache.client), own)
    )
    return Response(text, status_code=200, media_type=content_type)


ROUTES = Router(
    [
        LIVEZ,
        Route(
            "/",
            ("POST",),
            _probe,
            query=(),
            summary="Probe every Triton backend (a PingSource CloudEvent)",
            responses={200: ("what was probed", s.PROBE_RESULT)},
        ),
        Route(
            "/health",
            ("GET",),
            _health,
            query=(),
            summary="Backends, circuit breakers, last probes",
            responses={200: ("every backend", s.BACKENDS_HEALTH)},
        ),
        Route(
            "/v1/backends",
            ("GET",),
            _overview,
            scope="infer",
            summary="Every backend: circuit, last probe, rate, p50",
            query=(
                QueryParam(
                    "window_s",
                    {"type": "integer", "minimum": 10, "maximum": 600, "default": 300},
                    "how far back rate and p50 look",
                ),
            ),
            responses={200: ("every backend", s.BACKENDS_OVERVIEW)},
        ),
        Route(
            "/metrics",
            ("GET",),
            _metrics,
            query=(),
            summary="Prometheus metrics",
            responses={200: ("Prometheus text exposition", {"type": "string"}, "text/plain")},
        ),
    ],
    title="Kinfer backends",
)


@functions_framework.aio.http
async def serve_backends(request: Request) -> Response:
    if request.url.path != LIVEZ.rule:  # liveness touches nothing, not even the gates' objects
        function_services().rollouts.ensure_ticking()  # the rollout gates' loop, while this function is up
    return await dispatch(request, ROUTES, function_services(), "backends")
