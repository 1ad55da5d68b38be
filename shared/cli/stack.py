"""``kinfer up | status | down | demo``: the local stack and its main job."""

from __future__ import annotations

import argparse
import sys

from shared.cli import api, output
from shared.cli.errors import CliError
from shared.settings import LocalStackSettings, Settings

ACTIVATOR = "scale-to-zero activator"
URLS = (
    ("gateway (public API, auth)", "http://localhost:8080"),
    ("backends (health, breakers, metrics)", "http://localhost:8081"),
    ("infer", "http://localhost:8082"),
    ("models (registry without a key locally)", "http://localhost:8083"),
    ("keys (API key admin)", "http://localhost:8088"),
    ("console (web page, on the gateway)", "http://127.0.0.1:8080/console/"),
    ("Triton HTTP / gRPC / metrics", "http://localhost:8000  localhost:8001  http://localhost:8002/metrics"),
    (ACTIVATOR, "http://localhost:8092/status"),
    ("S3 API", "http://localhost:9000"),
    ("event relay (K_SINK)", "http://localhost:8090/kinfer/batch-chunks"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser("up", help="start the local stack (PostgreSQL, Redis, S3, Triton, functions)")
    up.add_argument(
        "--scale-to-zero",
        action="store_true",
        help="run Triton behind a local stand-in for Knative's activator: stopped after "
        "LOCAL_SCALE_TO_ZERO_IDLE_S (default 60) idle seconds, woken by the next request, which is held "
        "at most LOCAL_ACTIVATOR_HOLD_S (default 120); also KINFER_SCALE_TO_ZERO=1",
    )
    up.set_defaults(func=cmd_up)
    status = subparsers.add_parser("status", help="show the local stack's processes and health")
    output.add_output_arg(status)
    status.set_defaults(func=cmd_status)
    subparsers.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    demo = subparsers.add_parser(
        "demo",
        help="run the main job against the running stack",
        description="Registers a model, fetches it, runs a real-time inference and a "
        "batch job with a bad item, showing each request and answer. The "
        "model it registers points at the local Triton (127.0.0.1:8001).",
    )
    api.command(demo, cmd_demo)


def cmd_up(args: argparse.Namespace) -> int:
    from shared.localstack.procs import StackError
    from shared.localstack.stack import up

    try:
        settings = Settings.from_env()
        scale = bool(getattr(args, "scale_to_zero", False)) or LocalStackSettings.from_env().scale_to_zero
        state = up(settings, say=lambda m: print(f"  {m}", flush=True), scale_to_zero=scale)
    except StackError as exc:  # up() has stopped what it started, and only that
        raise CliError(str(exc), code="stack_failed", hint="`kinfer logs PART` shows a part's log") from None
    print("\nKinfer is up:")
    behind_activator = "activator" in state.get("components", {})
    for what, url in URLS:
        if what != ACTIVATOR or behind_activator:  # only the parts that run
            print(f"  {what:<40} {url}")
    print("\nTry:  kinfer demo     (dev API key: demo-token)\nStop: kinfer down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from shared.localstack.stack import status

    rows = status()
    if not rows:
        print("the local stack is not running (start it with `kinfer up`)")
        return 1
    for row in rows:
        # the activator's own state for Triton and its agent behind it: serving, waking, idle-stopped
        row["state"] = row.get("state") or (
            "healthy" if row["healthy"] else ("unhealthy" if row["alive"] else "stopped")
        )
        row["serving_pids"] = ",".join(str(p) for p in row["serving"] if p != row["pid"]) or "-"
    output.emit(
        args,
        {"components": rows},
        rows="components",
        columns=[
            output.column("PART", "name"),
            output.column("PID", "pid"),
            output.column("SERVING PIDS", "serving_pids"),
            output.column("STATE", "state"),
            output.column("HEALTH URL", "url"),
        ],
    )
    if getattr(args, "output", "table") == "table":
        print(
            "PID: the process to signal (kill -9 takes the part down, workers included); "
            "SERVING PIDS: its uvicorn workers; `kinfer logs PART [-f]` shows a part's log",
            file=sys.stderr,
        )
    return 0 if all(r["healthy"] for r in rows) else 1


def cmd_down(args: argparse.Namespace) -> int:
    from shared.localstack.stack import down

    stopped = down(say=lambda m: print(f"  {m}"))
    print(f"stopped {stopped} process(es)" if stopped else "nothing was running")
    return 0


def cmd_demo(client: api.Client, args: argparse.Namespace) -> int:
    from shared.cli.demo import run_demo

    return run_demo(client.base_url, client.connection.key)
