"""``kinfer serve``: run one function (or the local gateway) under uvicorn.

This is the composition root of serving: it mounts the functions of ``shared.catalogue``
(``functions/<name>/main.py``, imported as ``functions.<name>.main``) on the public paths
the catalogue gives them.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

from shared import catalogue
from shared.cli.errors import UsageError
from shared.settings import Settings

# The gateway's own /health is the registry function's (its database and cache are the gateway's).
GATEWAY_HEALTH = ("/health", catalogue.by_folder("models"))


def gateway_mounts(pages: bool = True) -> list[tuple[str, str, str]]:
    """(path prefix, module, entry point) of every public API route of the catalogue, the gateway's
    /health, then (``pages``) the web pages it mounts beside the API (not in /openapi.json)."""
    api = [(prefix, fn) for fn in catalogue.FUNCTIONS for prefix in fn.public] + [GATEWAY_HEALTH]
    web = [(prefix, fn) for fn in catalogue.FUNCTIONS for prefix in fn.pages] if pages else []
    return [(prefix, fn.module, fn.target) for prefix, fn in api + web]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("serve", help="serve one function (FUNCTION_TARGET/FUNCTION_SOURCE) or the gateway")
    p.add_argument("--target", help="entry point name (default: FUNCTION_TARGET)")
    p.add_argument("--source", help="path of the function's main.py (default: FUNCTION_SOURCE)")
    p.add_argument("--gateway", action="store_true", help="serve every public HTTP function by path")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, help="default: PORT")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1; Knative scales pods instead)")
    p.add_argument(
        "--threads",
        type=int,
        help="blocking handlers (database, S3) run at once per worker; Knative's containerConcurrency "
        "is workers x threads (default: SERVER_CONCURRENCY)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.web.server import serve

    settings = Settings.from_env()
    port = args.port or settings.port
    threads = args.threads or settings.server_concurrency
    if args.workers > 1:  # each worker process builds the app from the environment it inherits
        os.environ["SERVER_CONCURRENCY"] = str(threads)
    if args.gateway:
        app: Any = "shared.cli.serve:gateway_app_from_settings" if args.workers > 1 else gateway_app()
    else:
        target = args.target or settings.function_target
        source = args.source or settings.function_source
        if not target or not source:
            raise UsageError("give --target and --source (or FUNCTION_TARGET and FUNCTION_SOURCE)")
        if not os.path.isfile(source):
            raise UsageError(f"function source {source} does not exist")
        if args.workers > 1:
            os.environ.update(FUNCTION_TARGET=target, FUNCTION_SOURCE=source)
            app = "shared.cli.serve:function_app_from_settings"
        else:
            app = function_app(target, source)
    serve(app, args.host, port, workers=args.workers, threads=threads)
    return 0


def function_app_from_settings() -> Any:
    """The app of FUNCTION_TARGET / FUNCTION_SOURCE (uvicorn's factory in each worker process)."""
    from shared.web.server import die_with_parent, with_thread_pool

    die_with_parent()
    settings = Settings.from_env()
    return with_thread_pool(
        function_app(settings.function_target, settings.function_source), settings.server_concurrency
    )


def gateway_app_from_settings() -> Any:
    """The gateway (uvicorn's factory in each worker process)."""
    from shared.web.server import die_with_parent, with_thread_pool

    die_with_parent()
    return with_thread_pool(gateway_app(), Settings.from_env().server_concurrency)


def function_app(target: str, source: str) -> Any:
    """The ASGI app of one function: a Kinfer function by package path, anything else via functions-framework."""
    from shared.web import server

    path = Path(source).resolve()
    if path.name == "main.py" and path.parent.parent.name == "functions":
        module = importlib.import_module(f"functions.{path.parent.name}.main")
        return server.asgi_adapter(getattr(module, target))
    return server.framework_app(target, source)


def gateway_app() -> Any:
    """Every public HTTP function in one app, routed by path prefix (no extra hop), the OpenAPI
    document of every route it reaches at ``/openapi.json``, Swagger UI over it at ``/docs``, and the
    process's Prometheus metrics (every function it mounts counts there) at ``/metrics`` and its recent
    spans at ``/debug/traces`` (admin key)."""
    from shared.web import openapi, server, swagger
    from shared.web.metrics import TRACES_PATH

    api = gateway_mounts(pages=False)
    mounted = [(prefix, importlib.import_module(module), entry) for prefix, module, entry in gateway_mounts()]
    routes = openapi.mounted_routes((prefix, module.ROUTES.routes) for prefix, module, _ in mounted[: len(api)])
    document = openapi.serve_document(routes, "Kinfer API")
    observe = _gateway_observability()
    own = [
        ("/openapi.json", document),
        (swagger.PREFIX, swagger.docs_page()),
        ("/metrics", observe),
        (TRACES_PATH, observe),
    ]
    return server.prefix_router(own + [(prefix, getattr(module, entry)) for prefix, module, entry in mounted])


def _gateway_observability() -> Any:
    """The gateway process's own ``/metrics`` and ``/debug/traces``, through the request pipeline. The gateway
    is the public entry, so its ``/metrics`` asks for an admin key: the exposition names every key's id with its
    token use and error counts (a function's own port stays open to Prometheus inside the cluster)."""
    import dataclasses

    from shared.web.dispatch import dispatch
    from shared.web.metrics import METRICS_ROUTE, TRACES_ROUTE
    from shared.web.routing import Router
    from shared.web.runtime import function_services

    metrics = dataclasses.replace(METRICS_ROUTE, scope="admin", always_auth=True)
    router = Router([metrics, TRACES_ROUTE], title="Kinfer gateway")

    async def observability(request: Any) -> Any:
        return await dispatch(request, router, function_services(), "gateway")

    return observability
