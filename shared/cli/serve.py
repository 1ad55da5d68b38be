"""``kinfer serve``: run one function (or the local gateway) under gunicorn."""

from __future__ import annotations

import argparse
import os

from shared.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve one function (FUNCTION_TARGET/FUNCTION_SOURCE) or the gateway")
    p.add_argument("--target", help="entry point name (default: FUNCTION_TARGET)")
    p.add_argument("--source", help="path of the function's main.py (default: FUNCTION_SOURCE)")
    p.add_argument("--gateway", action="store_true", help="serve every public HTTP function by path")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, help="default: PORT")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, help="requests served at once per worker (default: SERVER_CONCURRENCY)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared.server import function_app, gateway_app, serve

    settings = Settings.from_env()
    port = args.port or settings.port
    if args.gateway:
        app = gateway_app()
    else:
        target = args.target or settings.function_target
        source = args.source or settings.function_source
        if not target or not source:
            print("kinfer serve: give --target and --source (or FUNCTION_TARGET and FUNCTION_SOURCE)")
            return 2
        if not os.path.isfile(source):
            print(f"kinfer serve: function source {source} does not exist")
            return 2
        app = function_app(target, source)
    serve(app, args.host, port, workers=args.workers, threads=args.threads or settings.server_concurrency)
    return 0
