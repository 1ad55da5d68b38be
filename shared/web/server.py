"""Hosting: serve WSGI apps under gunicorn with threads, as functions-framework does.

This module hosts whatever entry points it is handed and never names its callers:
which function serves which path is decided by the composition root
(``shared.cli.serve``). gunicorn 27 would open a control socket in the home folder;
it is disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gunicorn.app.base

Entry = Callable[[Any], Any]  # flask.Request -> Response


class GunicornServer(gunicorn.app.base.BaseApplication):  # type: ignore[misc]
    def __init__(self, app: Any, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.application


def server_options(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 0,
        "keepalive": 75,
        "loglevel": "warning",
        "accesslog": None,
        "limit_request_line": 8190,
        "control_socket_disable": True,
    }


def framework_app(target: str, source: str) -> Any:
    """functions-framework's own app for a function file that is not a Kinfer function."""
    import functions_framework

    return functions_framework.create_app(target, source)


def wsgi_adapter(entry: Entry) -> Any:
    """A WSGI app calling ``entry(flask.Request) -> Response`` directly.

    A Kinfer entry point already does routing, errors and headers, so Flask's app
    machinery would only add per-request cost.
    """
    from flask import Request

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return entry(Request(environ))(environ, start_response)

    return app


def prefix_router(mounted: Sequence[tuple[str, Entry]]) -> Any:
    """One WSGI app handing each request to the first entry whose path prefix matches (404 JSON otherwise)."""
    from flask import Request

    from shared.errors import NotFound
    from shared.web.http import error_response, request_id_of

    def route(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        path = request.path
        for prefix, entry in mounted:
            if path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
                return entry(request)(environ, start_response)
        missing = NotFound(f"no route for {request.method} {path}")
        return error_response(missing, request_id_of(request), "")(environ, start_response)

    return route


def serve(app: Any, host: str, port: int, workers: int = 1, threads: int = 8) -> None:
    GunicornServer(app, server_options(host, port, workers, threads)).run()
