"""``kinfer agent``: the model agent beside a Triton (``shared.lifecycle.agent``).

In a Knative pod it runs as Triton's sidecar (``knative/base/services/triton.yaml``); ``kinfer up``
runs it as a process of the local stack. Settings come from the environment like every
Kinfer process (AGENT_TRITON_HTTP, AGENT_REPOSITORY_DIR, AGENT_BACKEND, AGENT_PORT, ...).
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("agent", help="run the model agent beside a Triton (loads what the registry says)")
    parser.add_argument("--once", action="store_true", help="one reconcile pass, then exit (0 when in sync)")
    parser.add_argument("--port", type=int, default=None, help="status port (default AGENT_PORT)")
    parser.set_defaults(func=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    from shared.lifecycle.agent import ModelAgent, serve_status
    from shared.logs import setup_logging
    from shared.services import get_services

    services = get_services()  # a bad setting: a usage error (exit 2) through shared.cli.main
    settings = services.settings
    # In a cluster K_SERVICE is Triton's Service (Knative sets it; a sidecar may not): say which process logs.
    setup_logging(
        "model-agent" if settings.service_name in ("kinfer", "triton") else settings.service_name, settings.log_level
    )
    agent = ModelAgent(services.registry, services.replicas, services.cache, services.s3, settings)
    if args.once:
        agent.reconcile_once()
        return 0 if agent.synced else 1
    server = serve_status(agent, args.port or settings.agent_port)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    logging.getLogger(__name__).info(
        "model agent for backend %s (Triton %s, repository %s), status on port %d",
        agent.backend,
        settings.agent_triton_http,
        agent.dir,
        server.server_port,
    )
    try:
        agent.run()
    except KeyboardInterrupt:
        agent.stop()
    finally:
        server.shutdown()
        services.close()
    return 0
