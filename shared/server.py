"""Serving functions in production shape: gunicorn with threads, as functions-framework does.

``kinfer serve`` (the container's command) serves one function picked by
FUNCTION_TARGET / FUNCTION_SOURCE, or the local gateway that mounts every public
HTTP function in one process. gunicorn 27 would open a control socket in the home
folder; it is disabled.
"""

from __future__ import annotations

from typing import Any

import gunicorn.app.base

# Path prefix -> (module path, entry point) of the public HTTP functions the gateway mounts.
GATEWAY_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("/v1/models", "functions.models.main", "manage_models"),
    ("/v1/infer", "functions.infer.main", "run_inference"),
    ("/v2/", "functions.infer.main", "run_inference"),
    ("/v1/batch", "functions.batch.main", "manage_batch_jobs"),
    ("/health", "functions.models.main", "manage_models"),
)


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


def function_app(target: str, source: str) -> Any:
    """The WSGI app of one function (``source`` is its main.py).

    A Kinfer function (``functions/<name>/main.py``) is imported by package path and
    served by a thin WSGI adapter: its entry point already does routing, errors and
    headers, so Flask's app machinery would only add per-request cost. Any other
    source is served by functions-framework's own app.
    """
    from pathlib import Path

    path = Path(source).resolve()
    if path.name == "main.py" and path.parent.parent.name == "functions":
        import importlib

        module = importlib.import_module(f"functions.{path.parent.name}.main")
        return wsgi_adapter(getattr(module, target))
    import functions_framework

    return functions_framework.create_app(target, source)


def wsgi_adapter(entry: Any) -> Any:
    """A WSGI app calling ``entry(flask.Request) -> Response`` directly."""
    from flask import Request

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return entry(Request(environ))(environ, start_response)

    return app


def gateway_app() -> Any:
    """One WSGI app routing public paths to the entry points, imported by package path (no extra hop)."""
    import importlib

    from flask import Request

    from shared.errors import NotFound
    from shared.http import error_response, request_id_of

    mounted = [(prefix, getattr(importlib.import_module(module), entry)) for prefix, module, entry in GATEWAY_ROUTES]

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
