"""The functions Kinfer deploys, in one table.

Each row says where a function lives (``functions/<folder>/main.py``), its entry point, the
Knative Service that runs it, its port in the local stack and the path prefixes the public
gateway sends it. The local stack (``kinfer up``), ``kinfer serve --gateway`` and the deploy
checks over ``knative/`` and ``terraform/`` all read this table, so a port, a route or an entry
point cannot drift between them. A prefix matches whole path segments (``/v2`` matches ``/v2``
and ``/v2/models/m``, not ``/v2x``), as a Gateway API ``PathPrefix`` does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Function:
    folder: str
    target: str
    service: str
    port: int
    public: tuple[str, ...] = ()  # API path prefixes of the public gateway (in /openapi.json)
    pages: tuple[str, ...] = ()  # web pages the public gateway mounts beside the API
    public_service: str | None = None  # the Service behind the public route, when not ``service``
    emits_events: bool = False  # posts CloudEvents to K_SINK (a SinkBinding in the cluster)
    local_without_auth: bool = False  # its own local port answers without a key (the original clients' port)

    @property
    def module(self) -> str:
        return f"functions.{self.folder}.main"

    @property
    def source(self) -> str:
        return f"functions/{self.folder}/main.py"

    @property
    def routed_service(self) -> str:
        """The Knative Service the public gateway sends this function's prefixes to."""
        return self.public_service or self.service


FUNCTIONS: tuple[Function, ...] = (
    Function(
        "models",
        "manage_models",
        "models",
        8083,
        public=("/v1/models", "/v1/capture"),
        public_service="models-public",
        local_without_auth=True,
    ),
    Function("backends", "serve_backends", "backends", 8081, public=("/v1/backends",)),
    Function(
        "infer",
        "run_inference",
        "infer",
        8082,
        # /v1/chat, /v1/completions and /openai: the OpenAI-compatible routes (shared.inference.openai)
        public=("/v1/infer", "/v1/requests", "/v2", "/v1/chat", "/v1/completions", "/openai"),
        emits_events=True,
    ),
    Function("batch", "manage_batch_jobs", "batch", 8084, public=("/v1/batch",), emits_events=True),
    Function("batch_intake", "intake_batch_request", "batch-intake", 8085, emits_events=True),
    Function("batch_worker", "process_batch_chunk", "batch-worker", 8086, emits_events=True),
    Function("batch_deadletter", "fail_dead_chunk", "batch-deadletter", 8087),
    Function("keys", "manage_api_keys", "keys", 8088, public=("/v1/keys", "/v1/audit", "/v1/usage")),
    Function("console", "serve_console", "console", 8091, pages=("/console",)),
)


def by_folder(folder: str) -> Function:
    return next(f for f in FUNCTIONS if f.folder == folder)


def public_routes() -> dict[str, Function]:
    """{path prefix: function} of every API route and page of the public gateway."""
    return {prefix: fn for fn in FUNCTIONS for prefix in (*fn.public, *fn.pages)}
