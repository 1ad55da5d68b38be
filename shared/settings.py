"""Configuration: one frozen ``Settings`` object built from the environment.

No other module reads ``os.environ``. ``Settings.from_env`` validates every
variable at once and raises ``ConfigError`` naming each bad one; secrets are
redacted in ``repr`` so a settings object can be logged safely.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """One or more environment variables are missing or malformed."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer between {lo} and {hi}, not {raw[:40]!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number between {lo} and {hi}, not {raw[:40]!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _str(raw: str) -> str:
    return raw.strip()


def _url_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


PG_DRIVER_SCHEME = "postgresql+pg8000"


def _database_url(raw: str) -> str:
    """A PostgreSQL URL for SQLAlchemy with pg8000: the standard ``postgresql://`` (or
    ``postgres://``) scheme is accepted and mapped to ``postgresql+pg8000://``.

    The error never repeats the URL (it may hold a password).
    """
    url = raw.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError("must be a URL like postgresql://user:password@host:5432/kinfer")
    if scheme.lower() in ("postgresql", "postgres", PG_DRIVER_SCHEME):
        return f"{PG_DRIVER_SCHEME}://{rest}"
    raise ValueError(f"scheme {scheme[:32]!r} is not supported; use postgresql:// (Kinfer connects with pg8000)")


def _origins(raw: str) -> tuple[str, ...]:
    """Browser origins allowed by CORS: ``scheme://host[:port]`` each, or ``*`` for any."""
    origins = []
    for item in _url_list(raw):
        origin = item.rstrip("/").lower()
        if origin != "*":
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
                raise ValueError(
                    f"{item[:100]!r} is not an origin like https://app.example.com (scheme://host[:port], no path) or *"
                )
        origins.append(origin)
    return tuple(origins)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _s3_uri(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("must look like s3://bucket[/prefix]")
    return value


def _redact_url(url: str) -> str:
    """Hide the password of a URL such as postgresql://user:pw@host/db."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _var(env: str, default: str | None, parse: Callable[[str], Any] = _str, secret: bool = False) -> Any:
    """Declare a field read from environment variable ``env``."""
    return field(default=None, metadata={"env": env, "default": default, "parse": parse, "secret": secret})


class _FromEnv:
    """``from_env``, ``env_names`` and a redacting ``repr`` for a frozen dataclass of ``_var`` fields."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            meta = f.metadata
            raw = env.get(meta["env"], meta["default"])
            try:
                values[f.name] = meta["parse"](raw)
            except (TypeError, ValueError) as exc:
                problems.append(f"{meta['env']}: {exc}")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return cls(**values)

    @classmethod
    def env_names(cls) -> list[str]:
        """Every environment variable the settings read (for deployment checks)."""
        return [f.metadata["env"] for f in fields(cls)]  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = _redact_url(value) if "://" in str(value) else "***"
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class Settings(_FromEnv):
    """What every Kinfer process (function, local stack) reads."""

    # State
    # postgresql:// is accepted and mapped to postgresql+pg8000:// (the driver Kinfer ships)
    database_url: str = _var("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/kinfer", _database_url, secret=True)
    db_pool_size: int = _var("DB_POOL_SIZE", "10", _int(1, 200))
    redis_url: str = _var("REDIS_URL", "redis://127.0.0.1:6379/0", secret=True)
    redis_timeout_s: float = _var("REDIS_TIMEOUT_S", "0.25", _float(0.01, 30))
    cache_ttl_s: int = _var("CACHE_TTL_S", "300", _int(1, 86400))
    # Object storage (MinIO in production, a local S3 API server in development)
    s3_endpoint_url: str = _var("S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    # Only for URLs handed to clients (presigned result_url): SigV4 signs the host, so a URL
    # presigned for the cluster-internal endpoint cannot be used outside. Empty: S3_ENDPOINT_URL.
    s3_public_endpoint_url: str = _var("S3_PUBLIC_ENDPOINT_URL", "")
    s3_region: str = _var("S3_REGION", "us-east-1")
    # static: S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY; ambient: boto3's default chain (IRSA, GKE Workload
    # Identity, an instance role), no static keys
    s3_credentials: str = _var("S3_CREDENTIALS", "static", _choice("static", "ambient"))
    s3_access_key_id: str = _var("S3_ACCESS_KEY_ID", "kinfer", secret=True)
    s3_secret_access_key: str = _var("S3_SECRET_ACCESS_KEY", "kinfer-secret", secret=True)
    s3_input_bucket: str = _var("S3_INPUT_BUCKET", "kinfer-batch-inputs")
    s3_results_bucket: str = _var("S3_RESULTS_BUCKET", "kinfer-batch-results")
    # Payload capture (shared.inference.capture): sampled requests and answers, written as JSON lines under
    # capture/<model>/<version>/<date>/<hour>/ in this bucket; a bounded queue (records and estimated bytes,
    # dropped and counted past either) flushed every CAPTURE_FLUSH_S or at CAPTURE_BATCH_MAX records
    capture_bucket: str = _var("CAPTURE_BUCKET", "kinfer-capture")
    capture_queue_max: int = _var("CAPTURE_QUEUE_MAX", "10000", _int(1, 10_000_000))
    capture_queue_max_bytes: int = _var("CAPTURE_QUEUE_MAX_BYTES", str(64 * 1024**2), _int(1024, 64 * 1024**3))
    capture_batch_max: int = _var("CAPTURE_BATCH_MAX", "1000", _int(1, 1_000_000))
    capture_flush_s: float = _var("CAPTURE_FLUSH_S", "5", _float(0.05, 3600))
    capture_gzip: bool = _var("CAPTURE_GZIP", "false", _bool)
    # How stale a process's copy of the capture settings may be (a change reaches every replica within it)
    capture_rules_ttl_s: float = _var("CAPTURE_RULES_TTL_S", "5", _float(0.05, 3600))
    result_url_expiry_s: int = _var("RESULT_URL_EXPIRY_S", "3600", _int(60, 604800))
    # Triton
    triton_url: str = _var("TRITON_URL", "127.0.0.1:8001")
    triton_timeout_s: float = _var("TRITON_TIMEOUT_S", "10", _float(0.1, 600))
    metadata_ttl_s: int = _var("METADATA_TTL_S", "60", _int(1, 86400))
    breaker_fail_max: int = _var("BREAKER_FAIL_MAX", "5", _int(1, 1000))
    breaker_reset_timeout_s: float = _var("BREAKER_RESET_TIMEOUT_S", "30", _float(0.1, 3600))
    # Generations (OpenAI-compatible routes) one infer process runs at once, one key at most half of them (at
    # least 1); past either, 429 at once rather than a queue that would end in first-token timeouts.
    generation_max_in_flight: int = _var("GENERATION_MAX_IN_FLIGHT", "16", _int(1, 100_000))
    # The longest a real-time caller may ask to be held (``Prefer: wait=N``) while its backend wakes from
    # zero; below the infer Service's timeoutSeconds and the route's timeout.
    wait_max_s: float = _var("WAIT_MAX_S", "240", _float(0, 3600))
    # false when TRITON_URL is a scale-to-zero Knative Service: a probe would wake it (and, counted as
    # traffic, keep it up), so it is never probed and its health is what its circuit breaker saw
    probe_triton_url: bool = _var("PROBE_TRITON_URL", "true", _bool)
    # Other backends that scale to zero (e.g. the triton-llm Service): never probed, never checked at
    # registration, for the same reason (host:port or URLs, comma-separated)
    probe_skip_backends: tuple[str, ...] = _var("PROBE_SKIP_BACKENDS", "", _url_list)
    # Model lifecycle: pushed artifacts land in this S3 model repository as <prefix>/<triton_model>/<n>/
    model_repository_uri: str = _var("MODEL_REPOSITORY_URI", "s3://kinfer-models/models", _s3_uri)
    max_artifact_bytes: int = _var("MAX_ARTIFACT_BYTES", str(1024**3), _int(1024, 64 * 1024**3))
    # Buckets an artifact_uri may name (empty: the model repository's bucket only)
    artifact_source_buckets: tuple[str, ...] = _var("ARTIFACT_SOURCE_BUCKETS", "", _url_list)
    # How Triton runs ONNX: its onnxruntime backend (production), or the Python backend running
    # onnxruntime (the local Triton of the nvidia-pytriton wheel has only the Python backend)
    onnx_backend: str = _var("ONNX_BACKEND", "onnxruntime", _choice("onnxruntime", "python"))
    onnx_max_batch_size: int = _var("ONNX_MAX_BATCH_SIZE", "64", _int(1, 65536))
    # host:port patterns (fnmatch, e.g. "*.kinfer.svc.cluster.local:80") a registered backend_url may
    # name; empty: TRITON_URL only. Nothing else is ever contacted (the registry is no port scanner).
    backend_allowlist: tuple[str, ...] = _var("BACKEND_ALLOWLIST", "", _url_list)
    # Check at registration that backend_url answers as Triton and serves triton_model
    check_backends: bool = _var("CHECK_BACKENDS", "true", _bool)
    # The model agent beside each Triton (kinfer agent): which backend it serves (empty: TRITON_URL),
    # its Triton's HTTP endpoint, the local repository folder it writes for that Triton, its own port
    agent_backend: str = _var("AGENT_BACKEND", "")
    agent_triton_http: str = _var("AGENT_TRITON_HTTP", "http://127.0.0.1:8000")
    # Triton's model-repository API may be restricted to callers that send this header with this key
    # (--http-restricted-api=model-repository:<header>=<key>); the agent sends it when both are set
    triton_admin_header: str = _var("TRITON_ADMIN_HEADER", "")
    triton_admin_key: str = _var("TRITON_ADMIN_KEY", "", secret=True)
    agent_repository_dir: str = _var("AGENT_REPOSITORY_DIR", "/models")
    agent_port: int = _var("AGENT_PORT", "8089", _int(1, 65535))
    agent_sync_s: float = _var("AGENT_SYNC_S", "5", _float(0.05, 3600))
    agent_heartbeat_ttl_s: float = _var("AGENT_HEARTBEAT_TTL_S", "15", _float(0.5, 3600))
    # A version no alias or active status needs any more is unloaded this long after it stopped being needed
    unload_grace_s: float = _var("UNLOAD_GRACE_S", "30", _float(0, 86400))
    # Concurrent single-row requests for one model version on one backend are merged into one Triton
    # request; a request waits at most this long for company (0 turns coalescing off)
    coalesce_wait_ms: float = _var("COALESCE_WAIT_MS", "2", _float(0, 1000))
    # Shadow versions (shared.lifecycle.shadow): at most this many mirrored requests in flight per process
    # (past it a mirror is dropped and counted), each given at most SHADOW_TIMEOUT_S
    shadow_max_pending: int = _var("SHADOW_MAX_PENDING", "64", _int(1, 100_000))
    shadow_timeout_s: float = _var("SHADOW_TIMEOUT_S", "10", _float(0.1, 600))
    # Rollout gates (shared.lifecycle.rollout): how often the backends function's controller decides
    rollout_tick_s: float = _var("ROLLOUT_TICK_S", "5", _float(0.2, 3600))
    # HTTP limits and access
    max_body_bytes: int = _var("MAX_BODY_BYTES", str(10 * 1024 * 1024), _int(1024, 1024**3))
    # One real-time inference request: at most this many rows and tensor elements (bulk goes to batch jobs)
    max_infer_rows: int = _var("MAX_INFER_ROWS", "1024", _int(1, 1_000_000))
    max_infer_elements: int = _var("MAX_INFER_ELEMENTS", "262144", _int(1, 100_000_000))
    # The longest string element (bytes, UTF-8) of a BYTES tensor, on every path a tensor takes
    max_string_bytes: int = _var("MAX_STRING_BYTES", "65536", _int(1, 64 * 1024 * 1024))
    auth_required: bool = _var("AUTH_REQUIRED", "true", _bool)
    rate_limit_per_minute: int = _var("RATE_LIMIT_PER_MINUTE", "600", _int(1, 10_000_000))
    # Browser origins allowed to call the API (CORS), comma-separated; "*" any; empty: none. Keys travel
    # in the Authorization header only (no cookies), so credentialed CORS is never offered.
    cors_allowed_origins: tuple[str, ...] = _var("CORS_ALLOWED_ORIGINS", "", _origins)
    # Batch
    batch_chunk_size: int = _var("BATCH_CHUNK_SIZE", "2500", _int(1, 100_000))
    batch_max_items: int = _var("BATCH_MAX_ITEMS", "1000000", _int(1, 100_000_000))
    # An ``input_url`` object: at most this many bytes in all, and this many in one line (one item; a
    # longer line refuses the job with 400 naming it, read in linear time and never held whole)
    batch_max_input_bytes: int = _var("BATCH_MAX_INPUT_BYTES", str(1024**3), _int(1024, 1024**4))
    batch_max_line_bytes: int = _var("BATCH_MAX_LINE_BYTES", str(8 * 1024**2), _int(64, 1024**3))
    # What one key may have pending or processing at once (429 past it): the workers are shared by every key
    batch_max_active_jobs: int = _var("BATCH_MAX_ACTIVE_JOBS", "8", _int(1, 100_000))
    batch_max_active_items: int = _var("BATCH_MAX_ACTIVE_ITEMS", "2000000", _int(1, 1_000_000_000))
    # An active job with no chunk claimed or recorded for this long is failed (shared.batch.reaper);
    # longer than the event transport's whole retry window (knative/ batch-worker-source delivery).
    batch_stall_timeout_s: int = _var("BATCH_STALL_TIMEOUT_S", "3600", _int(60, 30 * 86400))
    # Async inference (``Prefer: respond-async``, GET /v1/requests/{id}; shared.batch.requests): how long a
    # request and its result are kept; how long the worker holds one while its backend wakes (below the event
    # delivery timeout: a longer cold start is covered by redelivery with backoff); callback hosts (fnmatch on
    # host or host:port) that may resolve to internal addresses; the HMAC secret of Kinfer-Signature (empty:
    # callback_url is refused)
    request_retention_s: int = _var("REQUEST_RETENTION_S", "86400", _int(60, 30 * 86400))
    request_wait_s: float = _var("REQUEST_WAIT_S", "5", _float(0, 3600))
    # Per API key: at most this many async requests queued or running at once (429 past it), each body at most
    # this many bytes (it is stored until the request ends)
    request_max_active: int = _var("REQUEST_MAX_ACTIVE", "100", _int(1, 1_000_000))
    request_max_body_bytes: int = _var("REQUEST_MAX_BODY_BYTES", str(1024**2), _int(1024, 64 * 1024**2))
    callback_allowlist: tuple[str, ...] = _var("CALLBACK_ALLOWLIST", "", _url_list)
    callback_signing_secret: str = _var("CALLBACK_SIGNING_SECRET", "", secret=True)
    k_sink: str = _var("K_SINK", "")
    # One event to K_SINK, retries included: past this the caller gets 503 with Retry-After (a stalled
    # sink, say its Kafka or the local relay's Redis paused, must not hold a submit for half a minute)
    event_emit_timeout_s: float = _var("EVENT_EMIT_TIMEOUT_S", "5", _float(0.5, 120))
    event_source: str = _var("EVENT_SOURCE", "/kinfer/batch")
    # Who may send events to the event functions (shared.access.eventauth): none (the local stack), or oidc:
    # every event route first verifies the sender's Knative Eventing OIDC token (authentication-oidc): its
    # signature against the issuer's JWKS, issuer, audience ({service}: this function's K_SERVICE), expiry
    # and subject (exact, comma-separated system:serviceaccount:<namespace>:<name>); the JWKS is fetched
    # trusting EVENT_OIDC_CA_FILE and sending the token in EVENT_OIDC_TOKEN_FILE when they are set
    event_auth: str = _var("EVENT_AUTH", "none", _choice("none", "oidc"))
    event_oidc_issuer: str = _var("EVENT_OIDC_ISSUER", "https://kubernetes.default.svc")
    event_oidc_audience: str = _var("EVENT_OIDC_AUDIENCE", "kinfer/{service}")
    event_oidc_jwks_url: str = _var("EVENT_OIDC_JWKS_URL", "https://kubernetes.default.svc/openid/v1/jwks")
    event_oidc_subjects: tuple[str, ...] = _var("EVENT_OIDC_SUBJECTS", "", _url_list)
    event_oidc_ca_file: str = _var("EVENT_OIDC_CA_FILE", "")
    event_oidc_token_file: str = _var("EVENT_OIDC_TOKEN_FILE", "")
    # the longest life (exp - iat) a sender's token may have: a stolen long-lived token stays refused
    event_oidc_max_lifetime_s: int = _var("EVENT_OIDC_MAX_LIFETIME_S", "86400", _int(60, 604800))
    # Process identity and telemetry
    service_name: str = _var("K_SERVICE", "kinfer")
    port: int = _var("PORT", "8080", _int(1, 65535))
    # Requests one `kinfer serve` process serves at once (its threads); the Knative manifests
    # set containerConcurrency to the same value
    server_concurrency: int = _var("SERVER_CONCURRENCY", "8", _int(1, 1000))
    function_target: str = _var("FUNCTION_TARGET", "")
    function_source: str = _var("FUNCTION_SOURCE", "")
    log_level: str = _var("LOG_LEVEL", "INFO")
    otlp_endpoint: str = _var("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    # Share of new traces recorded (parent-based: a caller's sampled traceparent is always followed)
    trace_sample_ratio: float = _var("TRACE_SAMPLE_RATIO", "0.1", _float(0, 1))
    # Recorded spans kept in memory per process for the admin-only GET /debug/traces (0: off; `kinfer up` keeps 2000)
    trace_buffer_spans: int = _var("TRACE_BUFFER_SPANS", "0", _int(0, 100_000))
    # API keys: how long a key lookup is trusted in-process (revocation takes effect within it)
    auth_cache_ttl_s: float = _var("AUTH_CACHE_TTL_S", "5", _float(0, 300))
    # While PostgreSQL is unreachable, a key seen valid within this many seconds keeps working (0: never)
    auth_outage_ttl_s: float = _var("AUTH_OUTAGE_TTL_S", "3600", _float(0, 7 * 86400))


@dataclass(frozen=True, repr=False)
class ClientSettings(_FromEnv):
    """What the ``kinfer`` command line reads to reach a Kinfer API (never a server process).

    Flags win over these, these over the config file's context (``shared.cli.contexts``).
    """

    url: str = _var("KINFER_URL", "")
    api_key: str = _var("KINFER_API_KEY", "", secret=True)
    context: str = _var("KINFER_CONTEXT", "")
    # The config file: KINFER_CONFIG, else $XDG_CONFIG_HOME/kinfer/config.toml, else ~/.config/kinfer/config.toml
    config_file: str = _var("KINFER_CONFIG", "")
    xdg_config_home: str = _var("XDG_CONFIG_HOME", "")
    home: str = _var("HOME", "")
    # Show the traceback of an unexpected error instead of one line
    debug: bool = _var("KINFER_DEBUG", "false", _bool)


@dataclass(frozen=True, repr=False)
class LocalStackSettings(_FromEnv):
    """What ``kinfer up`` reads for the local stack alone (never deployed: the cluster has Knative)."""

    # Scale the local Triton to zero behind ``shared.localstack.activator`` (``kinfer up --scale-to-zero``)
    scale_to_zero: bool = _var("KINFER_SCALE_TO_ZERO", "false", _bool)
    # Seconds without a byte through the activator before it stops Triton and its model agent
    idle_s: float = _var("LOCAL_SCALE_TO_ZERO_IDLE_S", "60", _float(0.5, 86400))
    # The longest the activator holds a connection while Triton wakes (Knative's activator: its timeout)
    hold_s: float = _var("LOCAL_ACTIVATOR_HOLD_S", "120", _float(1, 3600))
