"""``kinfer up | status | down | demo``: the local stack and its main job."""

from __future__ import annotations

import argparse
import sys

from shared.settings import ConfigError, Settings

URLS = (
    ("gateway (public API, auth)", "http://localhost:8080"),
    ("backends (health, breakers, metrics)", "http://localhost:8081"),
    ("infer", "http://localhost:8082"),
    ("models (internal, no auth)", "http://localhost:8083"),
    ("Triton HTTP / gRPC / metrics", "http://localhost:8000  localhost:8001  http://localhost:8002/metrics"),
    ("S3 API", "http://localhost:9000"),
    ("event relay (K_SINK)", "http://localhost:8090/kinfer/batch-chunks"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    subparsers.add_parser("up", help="start the local stack (PostgreSQL, Redis, S3, Triton, functions)") \
        .set_defaults(func=cmd_up)
    subparsers.add_parser("status", help="show the local stack's processes and health").set_defaults(func=cmd_status)
    subparsers.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    demo = subparsers.add_parser("demo", help="run the main job against the running stack")
    demo.add_argument("--url", default="http://localhost:8080")
    demo.add_argument("--key", default="demo-token")
    demo.set_defaults(func=cmd_demo)


def _err(message: str) -> int:
    sys.stderr.write(f"kinfer: {message}\n")
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    from shared.localstack.procs import StackError
    from shared.localstack.stack import down, up

    try:
        settings = Settings.from_env()
        up(settings, say=lambda m: print(f"  {m}", flush=True))
    except (StackError, ConfigError) as exc:
        _err(str(exc))
        print("stopping what was started", flush=True)
        down(say=lambda m: print(f"  {m}"))
        return 1
    print("\nKinfer is up:")
    for what, url in URLS:
        print(f"  {what:<40} {url}")
    print("\nTry:  kinfer demo     (dev API key: demo-token)\nStop: kinfer down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from shared.localstack.stack import status

    rows = status()
    if not rows:
        print("the local stack is not running (start it with `kinfer up`)")
        return 1
    print(f"{'part':<18}{'pid':>8}  {'state':<10}{'health URL'}")
    for row in rows:
        state = "healthy" if row["healthy"] else ("unhealthy" if row["alive"] else "stopped")
        print(f"{row['name']:<18}{row['pid'] or '-':>8}  {state:<10}{row['url'] or ''}")
    return 0 if all(r["healthy"] for r in rows) else 1


def cmd_down(args: argparse.Namespace) -> int:
    from shared.localstack.stack import down

    stopped = down(say=lambda m: print(f"  {m}"))
    print(f"stopped {stopped} process(es)" if stopped else "nothing was running")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from shared.cli.demo import run_demo

    return run_demo(args.url, args.key)
