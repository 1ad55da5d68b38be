"""The composition root: clients and the domain objects built on them, created lazily from Settings.

Functions call ``get_services()``; tests call ``reset_services(settings)``. Every client and
collaborator is a typed attribute created on first use (cold starts import only what a
request needs). Domain objects receive the narrow collaborators they use through their
constructors (``ModelRegistry(db, cache, settings)``, ``DataPlane(resolver, ...)``): nothing
below this module imports it, and no domain function takes the container.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.settings import Settings

if TYPE_CHECKING:
    from shared.access.auth import Authenticator, KeyCache
    from shared.access.eventauth import EventAuthenticator
    from shared.access.keys import KeyStore
    from shared.access.ratelimit import RateLimiter
    from shared.access.tokens import TokenMeter
    from shared.audit import AuditLog
    from shared.backends.balancer import Balancer
    from shared.backends.breaker import Breakers
    from shared.backends.coalesce import Coalescer
    from shared.backends.metrics import Recorder
    from shared.backends.monitor import BackendMonitor
    from shared.backends.overview import BackendOverview
    from shared.backends.triton_async import AsyncTriton
    from shared.batch.events import InferEventData
    from shared.batch.intake import BatchIntake
    from shared.batch.jobs import BatchJobs
    from shared.batch.reaper import Reaper
    from shared.batch.replay import Replays
    from shared.batch.requests import AsyncRequests
    from shared.batch.results import BatchResults
    from shared.batch.worker import BatchWorker
    from shared.clients.aio import LoopThread, PerLoop, SingleFlight
    from shared.clients.cache import Cache
    from shared.clients.db import Database
    from shared.inference.capture import Capture
    from shared.inference.capture_rules import CaptureRules
    from shared.inference.dataplane import DataPlane
    from shared.inference.health import InferenceHealth
    from shared.inference.items import ItemRunner
    from shared.inference.openai import OpenAICompat
    from shared.inference.resolve import Resolver
    from shared.inference.v2 import V2Protocol
    from shared.lifecycle.aliases import Aliases
    from shared.lifecycle.artifacts import Artifacts
    from shared.lifecycle.backends import BackendAdmin
    from shared.lifecycle.install import Installer
    from shared.lifecycle.replicas import Replicas
    from shared.lifecycle.rollout import Rollouts
    from shared.lifecycle.shadow import ShadowMirror, ShadowStats
    from shared.lifecycle.versions import Versions
    from shared.registry import ModelRegistry

_lock = threading.Lock()
_services: Services | None = None


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
    def triton_loop(self) -> LoopThread:
        """The event loop on which threads (batch worker, probe, registration checks) use ``triton_async``."""
        from shared.clients.aio import LoopThread

        return LoopThread("triton-calls")

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
    def single_flight(self) -> SingleFlight:
        """Concurrent requests share one execution of a slow lookup (registry resolution)."""
        from shared.clients.aio import SingleFlight

        return SingleFlight()

    # -- domain objects (each built from the narrow collaborators it uses) ------------------
    # registry + access
    @cached_property
    def registry(self) -> ModelRegistry:
        from shared.registry import ModelRegistry

        return ModelRegistry(self.db, self.cache, self.settings)

    @cached_property
    def audit(self) -> AuditLog:
        """The append-only audit log (``shared.audit``): every admin action and platform decision."""
        from shared.audit import AuditLog

        return AuditLog(self.db)

    @cached_property
    def keys(self) -> KeyStore:
        from shared.access.keys import KeyStore

        return KeyStore(self.db, self.settings.callback_signing_secret)

    @cached_property
    def event_auth(self) -> EventAuthenticator:
        from shared.access.eventauth import EventAuthenticator

        return EventAuthenticator(self.settings)

    @cached_property
    def tokens(self) -> TokenMeter:
        """Token limits per key (Redis windows) and token usage (PostgreSQL ``token_usage``, batched; at exit)."""
        import atexit

        from shared.access.tokens import TokenMeter

        meter = TokenMeter(self.cache, self.db)
        atexit.register(meter.close)
        return meter

    @cached_property
    def auth(self) -> Authenticator:
        from shared.access.auth import Authenticator

        return Authenticator(self.keys, self.key_cache, self.rate_limiter, self.settings)

    # backends
    @cached_property
    def monitor(self) -> BackendMonitor:
        from shared.backends.monitor import BackendMonitor

        return BackendMonitor(
            self.registry, self.triton_async, self.triton_loop, self.breakers, self.cache, self.settings
        )

    @cached_property
    def overview(self) -> BackendOverview:
        from shared.backends.overview import BackendOverview

        return BackendOverview(self.monitor, self.cache)

    @cached_property
    def backend_admin(self) -> BackendAdmin:
        from shared.lifecycle.backends import BackendAdmin

        return BackendAdmin(self.s3, self.triton_async, self.triton_loop, self.replicas, self.settings)

    # lifecycle
    @cached_property
    def replicas(self) -> Replicas:
        from shared.lifecycle.replicas import Replicas

        return Replicas(self.cache, self.settings)

    @cached_property
    def aliases(self) -> Aliases:
        from shared.lifecycle.aliases import Aliases

        return Aliases(self.registry, self.replicas, self.db)

    @cached_property
    def installer(self) -> Installer:
        from shared.lifecycle.install import Installer

        return Installer(self.registry, self.s3, self.settings, self.backend_admin)

    @cached_property
    def artifacts(self) -> Artifacts:
        from shared.lifecycle.artifacts import Artifacts

        return Artifacts(self.registry, self.installer, self.db, self.cache, self.s3, self.settings, self.backend_admin)

    @cached_property
    def versions(self) -> Versions:
        from shared.lifecycle.versions import Versions

        return Versions(self.registry, self.replicas, self.s3, self.settings)

    # inference
    @cached_property
    def resolver(self) -> Resolver:
        from shared.inference.resolve import Resolver

        return Resolver(self.registry, self.version_recorder, self.single_flight, self.settings)

    @cached_property
    def dataplane(self) -> DataPlane:
        from shared.inference.dataplane import DataPlane

        return DataPlane(
            self.resolver,
            self.balancer,
            self.triton_async,
            self.coalescer,
            self.settings,
            self.shadow_mirror,
            capture=self.capture,
        )

    @cached_property
    def capture_rules(self) -> CaptureRules:
        """Capture settings: PostgreSQL, and the in-process copy the data path reads."""
        from shared.inference.capture_rules import CaptureRules

        return CaptureRules(self.db, self.audit, self.settings.capture_rules_ttl_s, self.registry)

    @cached_property
    def capture(self) -> Capture:
        """Sampled request/answer records, queued and written to CAPTURE_BUCKET off the hot path (and at exit)."""
        import atexit

        from shared.inference.capture import Capture, WriterProcess

        capture = Capture(self.capture_rules, WriterProcess(self.settings), self.settings)
        atexit.register(capture.close)
        return capture

    @cached_property
    def shadow_mirror(self) -> ShadowMirror:
        """Mirrors answered requests to an alias's shadow versions (``lifecycle.shadow``), bounded."""
        import atexit

        from shared.lifecycle.shadow import ShadowMirror

        mirror = ShadowMirror(self.cache, self.settings.shadow_max_pending, self.settings.shadow_timeout_s)
        atexit.register(mirror.close)
        return mirror

    @cached_property
    def shadow_stats(self) -> ShadowStats:
        from shared.lifecycle.shadow import ShadowStats

        return ShadowStats(self.cache)

    @cached_property
    def rollouts(self) -> Rollouts:
        """Automatic rollouts of aliases, step by step behind gates (``lifecycle.rollout``)."""
        from shared.lifecycle.rollout import Rollouts

        return Rollouts(self.db, self.cache, self.aliases, self.audit, self.settings)

    @cached_property
    def v2(self) -> V2Protocol:
        from shared.inference.v2 import V2Protocol

        return V2Protocol(self.dataplane, self.resolver, self.balancer, self.triton_async, self.settings)

    @cached_property
    def openai(self) -> OpenAICompat:
        """The OpenAI-compatible routes: chat/completions over a generative Triton model, the model list."""
        from shared.inference.openai import OpenAICompat

        return OpenAICompat(
            self.resolver,
            self.balancer,
            self.triton_async,
            self.registry,
            self.tokens,
            self.settings,
            capture=self.capture,
            shadow=self.shadow_mirror,
        )

    @cached_property
    def infer_health(self) -> InferenceHealth:
        from shared.inference.health import InferenceHealth

        return InferenceHealth(self.db, self.cache, self.balancer, self.resolver, self.single_flight, self.settings)

    @cached_property
    def items(self) -> ItemRunner:
        from shared.inference.items import ItemRunner

        return ItemRunner(
            self.resolver,
            self.balancer,
            self.triton_async,
            self.triton_loop,
            max_elements=self.settings.max_infer_elements,
        )

    # batch
    @cached_property
    def results(self) -> BatchResults:
        from shared.batch.results import BatchResults

        return BatchResults(self.s3, self.s3_presigner, self.settings)

    @cached_property
    def jobs(self) -> BatchJobs:
        from shared.batch.jobs import BatchJobs

        return BatchJobs(
            self.db, self.s3, self.s3_presigner, self.registry, self.results, self.ensure_batch_buckets, self.settings
        )

    @cached_property
    def replays(self) -> Replays:
        """Batch jobs built from captured traffic, and their comparison with the captured answers."""
        from shared.batch.replay import Replays

        return Replays(self.jobs, self.s3, self.settings)

    @cached_property
    def worker(self) -> BatchWorker:
        from shared.batch.worker import BatchWorker

        return BatchWorker(self.db, self.s3, self.registry, self.results, self.items, self.settings)

    @cached_property
    def reaper(self) -> Reaper:
        from shared.batch.reaper import Reaper

        return Reaper(self.db, self.s3, self.jobs, self.settings)

    @cached_property
    def intake(self) -> BatchIntake:
        from shared.batch.intake import BatchIntake

        return BatchIntake(self.jobs, self.settings)

    # async inference (Prefer: respond-async, /v1/requests)
    @cached_property
    def requests(self) -> AsyncRequests:
        from shared.batch.callbacks import CallbackPolicy
        from shared.batch.requests import AsyncRequests
        from shared.clients import sink

        settings = self.settings

        def emit(event_type: str, event_id: str, data: InferEventData) -> None:
            extensions = {"partitionkey": data["request_id"]}
            sink.emit(
                settings,
                type=event_type,
                source=settings.event_source,
                subject=data["request_id"],
                data=dict(data),
                extensions=extensions,
                id=event_id,
                timeout_s=settings.event_emit_timeout_s,
            )

        policy = CallbackPolicy(
            settings.callback_allowlist, settings.callback_signing_secret, secret_of=self.keys.callback_secret_of
        )
        return AsyncRequests(self.db, self.resolver, self.dataplane, self.v2, policy, emit, settings)

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
        first, last = {"recorder", "version_recorder", "capture", "tokens"}, {"cache": 2, "db": 3}
        created.sort(key=lambda name: 0 if name in first else last.get(name, 1))
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
