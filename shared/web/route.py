"""A route's declaration: its path rule, methods, handler, auth scope, and what documents it
(``shared.web.openapi`` builds the OpenAPI document from these, so the contract is the code).
Plain data: ``shared.web.routing`` matches requests against them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.web.request import Call


@dataclass(frozen=True)
class QueryParam:
    """A documented query parameter (OpenAPI): its name, JSON Schema and one-line description."""

    name: str
    schema: Mapping[str, object] = field(default_factory=lambda: {"type": "string"}, compare=False)
    description: str = ""


@dataclass(frozen=True)
class Route:
    """One path rule: ``handler(call, **params)``; ``scope`` None means no auth ("any" = any valid key).

    AUTH_REQUIRED=false opens the routes of a scope to callers without a key (the local registry's
    clients), but not a route with ``always_auth``: inference and debug routes ask for a key whatever
    AUTH_REQUIRED says.

    ``stream`` routes get the body unread: their (async) handler iterates ``call.stream()``.
    ``event`` routes take a CloudEvent (Knative Eventing's delivery): ``handler(call, event)`` gets it
    parsed from the body, and failures answer the status that steers redelivery
    (``shared.web.events.event_error_status``; an unexpected error is 503, so the event is retried).
    ``query`` names the query parameters the route takes, as names or documented ``QueryParam``s: any
    other parameter is 400 (as for unknown body fields); None means not checked.
    The remaining fields only document the route in its function's OpenAPI document
    (``shared.web.openapi``): ``summary``; ``body``, the JSON Schema of the request body;
    ``responses``, ``{status: (description, JSON Schema or None[, media type])}`` of its
    successful answers (errors are documented for every route). A route without them is
    listed with a generic description.
    """

    rule: str
    methods: tuple[str, ...]
    handler: Callable[..., Any]
    scope: str | None = None
    always_auth: bool = False
    stream: bool = False
    event: bool = False
    query: tuple[QueryParam | str, ...] | None = None
    summary: str = ""
    body: Mapping[str, object] | None = field(default=None, compare=False)
    responses: Mapping[int, tuple[Any, ...]] | None = field(default=None, compare=False)

    @property
    def query_params(self) -> tuple[QueryParam, ...]:
        """The query parameters as ``QueryParam``s (a bare name is documented as a string)."""
        return tuple(q if isinstance(q, QueryParam) else QueryParam(q) for q in self.query or ())

    @property
    def query_names(self) -> tuple[str, ...] | None:
        return None if self.query is None else tuple(q.name for q in self.query_params)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)


async def _alive(call: Call) -> dict[str, str]:
    return {"status": "alive"}


# Liveness: answers while the process serves HTTP, whatever PostgreSQL, Redis or Triton do
# (readiness stays on /health); a failing dependency must not get pods restarted.
LIVEZ = Route(
    "/livez",
    ("GET",),
    _alive,
    query=(),
    summary="Liveness (touches no dependency)",
    responses={
        200: ("alive", {"type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}})
    },
)


OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"
