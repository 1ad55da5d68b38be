"""``kinfer serve``: run one function (or the local gateway) under uvicorn.

This is the composition root of serving: it knows where the functions live
(``functions/<name>/main.py``, imported as ``functions.<name>.main``) and which
public path each one serves on the local gateway.
"""

from __future__ import annotations

import argparse
import importlib
import os
from pathlib import Path
from typing import Any

from shared.settings import Settings

# Path prefix -> (module, entry point) of the public HTTP functions the gateway mounts.
GATEWAY_ROUTES: tuple[tuple[str, str, str], ...] = (
    ("/v1/models", "functions.models.main", "manage_models"),
    ("/v1/infer", "functions.infer.main", "run_inference"),
    ("/v2/", "functions.infer.main", "run_inference"),
    ("/v1/batch", "functions.batch.main", "manage_batch_jobs"),
    ("/v1/keys", "functions.keys.main", "manage_api_keys"),
    ("/v1/backends", "functions.backends.main", "serve_backends"),
    ("/health", "functions.models.main", "manage_models"),
)
# Web pages the gateway mounts beside the API (not API routes: not in /openapi.json).
GATEWAY_PAGES: tuple[tuple[str, str, str], ...] = (
    ("/console", "functions.console.main", "serve_console"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve one function (FUNCTION_TARGET/FUNCTION_SOURCE) or the gateway")
    p.add_argument("--target", help="entry point name (default: FUNCTION_TARGET)")
    p.add_argument("--source", help="path of the function's main.py (default: FUNCTION_SOURCE)")
    p.add_argument("--gateway", action="store_true", help="serve every public HTTP function by path")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, help="default: PORT")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1; Knative scales pods instead)")
    p.add_argument("--threads", type=int,
                   help="blocking handlers (database, S3) run at once per worker; Knative's containerConcurrency "
                        "is workers x threads (default: SERVER_CONCURRENCY)")
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
            print("kinfer serve: give --target and --source (or FUNCTION_TARGET and FUNCTION_SOURCE)")
            return 2
        if not os.path.isfile(source):
            print(f"kinfer serve: function source {source} does not exist")
            return 2
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
    return with_thread_pool(function_app(settings.function_target, settings.function_source),
                            settings.server_concurrency)


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
    """Every public HTTP function in one app, routed by path prefix (no extra hop), and the OpenAPI
    document of every route it reaches at ``/openapi.json``."""
    from shared.web import openapi, server

    modules = [(prefix, importlib.import_module(module), entry) for prefix, module, entry in GATEWAY_ROUTES]
    pages = [(prefix, importlib.import_module(module), entry) for prefix, module, entry in GATEWAY_PAGES]
    routes = openapi.mounted_routes((prefix, module.ROUTES.routes) for prefix, module, _ in modules)
    document = openapi.serve_document(routes, "Kinfer API")
    return server.prefix_router([("/openapi.json", document)] +
                                [(prefix, getattr(module, entry)) for prefix, module, entry in modules + pages])

