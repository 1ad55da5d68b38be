"""The process-wide container of clients and collaborators, built lazily from Settings.

Functions call ``get_services()``; tests call ``reset_services(settings)``. Every
collaborator is a typed attribute created on first use (cold starts import only what a
request needs), so a signature ``services: Services`` tells mypy and the reader what a
function can reach. This module sits above the domain packages it wires together: they
import it for typing only.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:
    from shared.access.auth import KeyCache
    from shared.access.ratelimit import RateLimiter
    from shared.backends.balancer import Balancer
    from shared.backends.breaker import Breakers
    from shared.backends.coalesce import Coalescer
    from shared.backends.metrics import Recorder
    from shared.backends.triton import TritonPool
    from shared.backends.triton_async import AsyncTriton
    from shared.clients.aio import PerLoop, SingleFlight
    from shared.clients.cache import Cache
    from shared.clients.db import Database

_lock = threading.Lock()
_services: Services | None = None

ResolvedModels = dict[tuple[str, "str | None"], tuple[float, dict[str, Any]]]


class Services:
    """Thread-safe clients (one engine, one Redis client, one S3 client, Triton channels) and the
    in-process collaborators built on them (breakers, balancer, limiter, caches)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- clients ------------------------------------------------------------------------
    @cached_property
    def db(self) -> Database:
        from shared.clients.db import Database

        return Database(self.settings)

    @cached_property
    def cache(self) -> Cache:
        from shared.clients.cache import Cache

        return Cache(self.settings)

    @cached_property
    def s3(self) -> Any:
        from shared.clients.storage import make_s3_client

        return make_s3_client(self.settings)

    @cached_property
    def s3_presigner(self) -> Any:
        """The S3 client that signs URLs handed to callers: for S3_PUBLIC_ENDPOINT_URL when set,
        since SigV4 binds the host (the cluster-internal endpoint is unreachable outside)."""
        if not self.settings.s3_public_endpoint_url:
            return self.s3
        from shared.clients.storage import make_s3_client

        return make_s3_client(self.settings, self.settings.s3_public_endpoint_url)

    @cached_property
    def triton(self) -> TritonPool:
        """Synchronous Triton clients (batch worker, probes); thread-safe."""
        from shared.backends.triton import TritonPool

        return TritonPool(self.settings)

    @cached_property
    def triton_async(self) -> AsyncTriton:
        """grpc.aio Triton clients for the real-time path (one channel per event loop and backend)."""
        from shared.backends.triton_async import AsyncTriton

        return AsyncTriton(self.settings, self.recorder)

    def coalescer(self) -> Coalescer:
        """The request coalescer of the running event loop (COALESCE_WAIT_MS; 0 sends every request alone)."""
        return self._coalescers.get()

    @cached_property
    def _coalescers(self) -> PerLoop[Coalescer]:
        from shared.backends.coalesce import Coalescer
        from shared.clients.aio import PerLoop

        wait = self.settings.coalesce_wait_ms / 1000
        return PerLoop(lambda: Coalescer(self.triton_async.infer, wait))

    # -- collaborators ----------------------------------------------------------------
    @cached_property
    def breakers(self) -> Breakers:
        from shared.backends.breaker import Breakers

        return Breakers(self.settings, self.cache)

    @cached_property
    def recorder(self) -> Recorder:
        """Backend request tallies, flushed to Redis every second and at exit."""
        import atexit

        from shared.backends.metrics import Recorder

        recorder = Recorder(self.cache)
        atexit.register(recorder.close)
        return recorder

    @cached_property
    def version_recorder(self) -> Recorder:
        """Per model-version request tallies (``lifecycle.metrics``), flushed like ``recorder``."""
        import atexit

        from shared.lifecycle.metrics import make_recorder

        recorder = make_recorder(self.cache)
        atexit.register(recorder.close)
        return recorder

    @cached_property
    def balancer(self) -> Balancer:
        from shared.backends.balancer import Balancer

        return Balancer(self.breakers, self.recorder, ready=lambda url: self.triton_async.server_ready(url))

    @cached_property
    def key_cache(self) -> KeyCache:
        from shared.access.auth import KeyCache

        return KeyCache(self.settings.auth_cache_ttl_s)

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        from shared.access.ratelimit import RateLimiter

        return RateLimiter(self.cache)

    @cached_property
    def resolved_models(self) -> ResolvedModels:
        """The data plane's tiny in-process cache of resolved models (see ``inference.dataplane``)."""
        return {}

    @cached_property
    def single_flight(self) -> SingleFlight:
        """Concurrent requests share one execution of a slow lookup (registry resolution)."""
        from shared.clients.aio import SingleFlight

        return SingleFlight()

    def ensure_batch_buckets(self) -> None:
        """Create the batch input and results buckets if missing (checked once per process)."""
        self._batch_buckets  # noqa: B018 - created on first access

    @cached_property
    def _batch_buckets(self) -> tuple[str, str]:
        from shared.clients.storage import ensure_buckets

        names = (self.settings.s3_input_bucket, self.settings.s3_results_bucket)
        ensure_buckets(self.s3, *names)
        return names

    def close(self) -> None:
        """Close whatever was created (tallies flushed first, connections last); the next use recreates."""
        created = [name for name in self.__dict__ if name != "settings"]
        created.sort(key=lambda name: {"recorder": 0, "version_recorder": 0, "cache": 2, "db": 3}.get(name, 1))
        for name in created:
            closer = getattr(self.__dict__.pop(name), "close", None)
            if callable(closer):
                closer()


def get_services() -> Services:
    """The process's services, created from the environment on first use."""
    global _services
    if _services is None:
        with _lock:
            if _services is None:
                _services = Services(Settings.from_env())
    return _services


def reset_services(settings: Settings | None = None) -> Services | None:
    """Close the current services; install new ones built from ``settings`` (tests, CLI)."""
    global _services
    with _lock:
        if _services is not None:
            _services.close()
        _services = Services(settings) if settings is not None else None
        return _services
