"""Configuration: one frozen ``Settings`` object built from the environment.

No other module reads ``os.environ``. ``Settings.from_env`` validates every
variable at once and raises ``ConfigError`` naming each bad one; secrets are
redacted in ``repr`` so a settings object can be logged safely.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """One or more environment variables are missing or malformed."""


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
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


def _redact_url(url: str) -> str:
    """Hide the password of a URL such as postgresql://user:pw@host/db."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _var(env: str, default: str | None, parse: Callable[[str], Any] = _str,
         secret: bool = False) -> Any:
    """Declare a field read from environment variable ``env``."""
    return field(default=None, metadata={"env": env, "default": default,
                                         "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # State
    database_url: str = _var("DATABASE_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/kinfer", secret=True)
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
    s3_access_key_id: str = _var("S3_ACCESS_KEY_ID", "kinfer", secret=True)
    s3_secret_access_key: str = _var("S3_SECRET_ACCESS_KEY", "kinfer-secret", secret=True)
    s3_input_bucket: str = _var("S3_INPUT_BUCKET", "kinfer-batch-inputs")
    s3_results_bucket: str = _var("S3_RESULTS_BUCKET", "kinfer-batch-results")
    result_url_expiry_s: int = _var("RESULT_URL_EXPIRY_S", "3600", _int(60, 604800))
    # Triton
    triton_url: str = _var("TRITON_URL", "127.0.0.1:8001")
    triton_timeout_s: float = _var("TRITON_TIMEOUT_S", "10", _float(0.1, 600))
    metadata_ttl_s: int = _var("METADATA_TTL_S", "60", _int(1, 86400))
    breaker_fail_max: int = _var("BREAKER_FAIL_MAX", "5", _int(1, 1000))
    breaker_reset_timeout_s: float = _var("BREAKER_RESET_TIMEOUT_S", "30", _float(0.1, 3600))
    # false when TRITON_URL is a scale-to-zero Knative Service: a probe would wake it (and, counted as
    # traffic, keep it up), so it is never probed and its health is what its circuit breaker saw
    probe_triton_url: bool = _var("PROBE_TRITON_URL", "true", _bool)
    # Concurrent single-row requests for one model version on one backend are merged into one Triton
    # request; a request waits at most this long for company (0 turns coalescing off)
    coalesce_wait_ms: float = _var("COALESCE_WAIT_MS", "2", _float(0, 1000))
    # HTTP limits and access
    max_body_bytes: int = _var("MAX_BODY_BYTES", str(10 * 1024 * 1024), _int(1024, 1024**3))
    # One real-time inference request: at most this many rows and tensor elements (bulk goes to batch jobs)
    max_infer_rows: int = _var("MAX_INFER_ROWS", "1024", _int(1, 1_000_000))
    max_infer_elements: int = _var("MAX_INFER_ELEMENTS", "262144", _int(1, 100_000_000))
    auth_required: bool = _var("AUTH_REQUIRED", "true", _bool)
    rate_limit_per_minute: int = _var("RATE_LIMIT_PER_MINUTE", "600", _int(1, 10_000_000))
    # Batch
    batch_chunk_size: int = _var("BATCH_CHUNK_SIZE", "1000", _int(1, 100_000))
    batch_max_items: int = _var("BATCH_MAX_ITEMS", "1000000", _int(1, 100_000_000))
    k_sink: str = _var("K_SINK", "")
    event_source: str = _var("EVENT_SOURCE", "/kinfer/batch")
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
    # API keys: how long a key lookup is trusted in-process (revocation takes effect within it)
    auth_cache_ttl_s: float = _var("AUTH_CACHE_TTL_S", "5", _float(0, 300))
    # While PostgreSQL is unreachable, a key seen valid within this many seconds keeps working (0: never)
    auth_outage_ttl_s: float = _var("AUTH_OUTAGE_TTL_S", "3600", _float(0, 7 * 86400))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in fields(cls):
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
        return [f.metadata["env"] for f in fields(cls)]

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = _redact_url(value) if "://" in str(value) else "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__
