"""Routing: werkzeug-style path rules (``/v1/models/<model_id>``, ``<path:name>``, ``<int:n>``) to
handlers, static rules before dynamic ones, a trailing slash ignored; 404, or 405 with ``Allow``.

Every ``Router`` serves its own ``/openapi.json`` (``shared.web.openapi``, from the routes'
declarations in ``shared.web.route``), ``/metrics`` (the process's counters) and ``/debug/traces``
(its recent spans, admin scope: ``shared.web.metrics``), unless one of its routes is already that path.
A route that names its ``query`` parameters answers 400 for any other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidInput, MethodNotAllowed, NotFound
from shared.web.metrics import METRICS_ROUTE, TRACES_PATH, TRACES_ROUTE
from shared.web.route import METRICS_PATH, OPENAPI_PATH, Route

if TYPE_CHECKING:
    from shared.web.request import Call


def _openapi_route(routes: list[Route], title: str) -> Route:
    """``GET /openapi.json``: the OpenAPI document of ``routes`` (built on first use)."""
    built: dict[str, dict[str, object]] = {}

    async def serve_openapi(call: Call) -> dict[str, object]:
        if "doc" not in built:
            from shared.web.openapi import document

            built["doc"] = document(routes, title=title)
        return built["doc"]

    return Route(
        OPENAPI_PATH,
        ("GET",),
        serve_openapi,
        query=(),
        summary="This function's OpenAPI 3.1 document",
        responses={200: ("the OpenAPI document", {"type": "object"})},
    )


_PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")
_CONVERTERS: dict[str, tuple[str, Callable[[str], object]]] = {
    "default": ("[^/]+", str),
    "string": ("[^/]+", str),
    "path": (".+", str),
    "int": (r"\d+", int),
}


class Router:
    """Routes requests by path and method: werkzeug-style rules (``<name>``, ``<path:name>``, ``<int:n>``),
    static rules before dynamic ones, a trailing slash ignored; 404 or 405 (with ``Allow``) otherwise."""

    def __init__(self, routes: Iterable[Route], title: str = "Kinfer") -> None:
        self.routes = list(routes)
        if not any(r.rule == OPENAPI_PATH for r in self.routes):  # every router documents itself
            self.routes.append(_openapi_route(self.routes, title))
        if not any(r.rule == METRICS_PATH for r in self.routes):  # and serves its process's counters
            self.routes.append(METRICS_ROUTE)
        if not any(r.rule == TRACES_PATH for r in self.routes):  # and its recent spans (admin)
            self.routes.append(TRACES_ROUTE)
        self._static: dict[str, list[Route]] = {}
        self._dynamic: list[tuple[re.Pattern[str], Route, dict[str, Callable[[str], object]]]] = []
        for route in self.routes:
            rule = _normal(route.rule)
            if "<" not in rule:
                self._static.setdefault(rule, []).append(route)
            else:
                pattern, converters = _compile(rule)
                self._dynamic.append((pattern, route, converters))

    def match(self, path: str, method: str) -> tuple[Route, dict[str, object]]:
        if not _storable(path):  # a NUL or a lone surrogate names nothing Kinfer can have stored
            raise NotFound(f"no route for {method} {path.encode('utf-8', 'backslashreplace').decode()[:200]!r}")
        normal = _normal(path)
        found: list[tuple[Route, dict[str, object]]] = [(r, {}) for r in self._static.get(normal, ())]
        for pattern, route, converters in self._dynamic:
            m = pattern.fullmatch(normal)
            if m is not None:
                found.append((route, {k: converters[k](v) for k, v in m.groupdict().items()}))
        if not found:
            raise NotFound(f"no route for {method} {path}")
        for route, params in found:
            if method in route.methods or (method == "HEAD" and "GET" in route.methods):
                return route, params
        methods = {m for route, _ in found for m in route.methods}
        allowed = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        raise MethodNotAllowed(f"{method} is not allowed on {path}; allowed: {allowed}", headers={"Allow": allowed})

    def allowed_methods(self, path: str) -> list[str]:
        """The methods some route serves on ``path`` (empty when no route matches it)."""
        normal = _normal(path)
        routes = list(self._static.get(normal, ())) + [r for p, r, _ in self._dynamic if p.fullmatch(normal)]
        methods = {m for route in routes for m in route.methods}
        return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def _storable(path: str) -> bool:
    if "\x00" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _normal(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def _compile(rule: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], object]]]:
    parts, converters, at = [], {}, 0
    for m in _PARAM.finditer(rule):
        kind = m.group("converter") or "default"
        if kind not in _CONVERTERS:
            raise ValueError(f"route {rule!r}: unknown converter {kind!r}")
        pattern, convert = _CONVERTERS[kind]
        parts += [re.escape(rule[at : m.start()]), f"(?P<{m.group('name')}>{pattern})"]
        converters[m.group("name")] = convert
        at = m.end()
    parts.append(re.escape(rule[at:]))
    return re.compile("".join(parts)), converters


def check_query(query: Any, allowed: tuple[str, ...]) -> None:
    """400 naming the first query parameter the route does not take, or one given twice."""
    seen: set[str] = set()
    for name, _ in query.multi_items():
        if name not in allowed:
            takes = f"allowed: {', '.join(allowed)}" if allowed else "this route takes no query parameters"
            raise InvalidInput(f"unknown query parameter {name[:64]!r}; {takes}", field=name[:64])
        if name in seen:
            raise InvalidInput(f"query parameter {name!r} is given more than once", field=name)
        seen.add(name)
