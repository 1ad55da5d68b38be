"""Which model, which backends: registry resolution behind an in-process cache, backend URLs and the
public names of backends.

What is cached is the registry's *target* for (name, version-or-alias): one version, or an
alias's weighted split; ``registry.pick`` then chooses this caller's version (sticky per
route key), so a canary costs no registry read per request.

``resolve_async`` (the real-time path) answers from a tiny in-process cache: an entry is
fresh for ``MODEL_TTL_S``; for ``MODEL_STALE_S`` more it is still served while one
background read refreshes it, so a registry change reaches inference within about a
second and no request waits for the registry once a model is warm. A miss reads the
registry (``shared.registry``: Redis, then PostgreSQL) in a thread, once however many
requests wait for it. Backends are named in public messages by the model's registry
identity (``label``), never by host:port.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from shared import telemetry
from shared.clients.aio import spawn
from shared.endpoints import resolve as resolve_backend
from shared.errors import NotFound

if TYPE_CHECKING:
    from shared.backends.metrics import Recorder
    from shared.clients.aio import SingleFlight
    from shared.domain import ModelVersion
    from shared.registry.reads import RegistryReads, ResolvedTarget
    from shared.settings import Settings

MODEL_TTL_S = 0.25
MODEL_STALE_S = 1.0
MAX_CACHED = 1024


class Resolver:
    """Owns the in-process cache of resolved models (registry targets) and names a model's backends."""

    def __init__(
        self, registry: RegistryReads, version_recorder: Recorder, single_flight: SingleFlight, settings: Settings
    ) -> None:
        self.registry = registry
        self.version_recorder = version_recorder
        self.single_flight = single_flight
        self.settings = settings
        self._models: dict[tuple[str, str | None], tuple[float, ResolvedTarget]] = {}

    async def resolve_async(self, name: str, version: str | None = None, route_key: str | None = None) -> ModelVersion:
        """The model row that serves this caller (404 when unknown or not servable), from the cache when warm:
        ``version`` names a version or an alias; ``route_key`` keeps a caller on one side of a split."""
        from shared import registry

        key, now = (name, version), time.monotonic()
        hit = self._models.get(key)
        if hit is not None:
            if hit[0] > now:
                return registry.pick(hit[1], route_key)
            if hit[0] + MODEL_STALE_S > now:
                spawn(self.single_flight.run(("model", key), lambda: self._read(key)), "model refresh")
                return registry.pick(hit[1], route_key)
        target = await self.single_flight.run(("model", key), lambda: self._read(key))
        return registry.pick(target, route_key)

    async def _read(self, key: tuple[str, str | None]) -> ResolvedTarget:
        try:
            with telemetry.child_span("registry.resolve", **{"kinfer.model": key[0]}):
                target = await asyncio.to_thread(self.registry.resolve_target, *key)
        except NotFound:
            self._models.pop(key, None)
            raise
        self._keep(key, target)
        return target

    def shadow_of(self, name: str, version: str | None) -> tuple[str | None, list[tuple[int, ModelVersion]]]:
        """The alias that served ``name``/``version`` and its shadow versions with their percent, from the cache
        entry the request just used (no registry read)."""
        hit = self._models.get((name, version))
        if hit is None:
            return None, []
        return hit[1]["alias"], hit[1].get("shadow", [])

    def _keep(self, key: tuple[str, str | None], target: ResolvedTarget) -> None:
        models = self._models
        if len(models) >= MAX_CACHED and key not in models:
            models.clear()
        models[key] = (time.monotonic() + MODEL_TTL_S, target)

    async def active_versions(self, name: str) -> list[str]:
        """Every active version of ``name``, oldest first (the registry's cached view of the name)."""
        from shared import registry

        view = await asyncio.to_thread(self.registry.view, name)
        return sorted(view["active"], key=registry.version_key)

    def record(self, model: ModelVersion, outcome: str, started: float) -> None:
        """Count one answer of ``model`` (its registry version) for ``/metrics`` (an in-process tally)."""
        from shared.lifecycle.metrics import record as record_version

        record_version(self.version_recorder, model["name"], model["version"], outcome, time.perf_counter() - started)

    def backend_urls(self, model: ModelVersion) -> list[str]:
        """The model's backends in host:port form (TRITON_URL when it names none)."""
        own = self.settings.triton_url
        single = model.get("backend_url")
        urls = model.get("backend_urls") or ([single] if single else [own])
        return list(dict.fromkeys(resolve_backend(u, own) for u in urls))


def triton_model(model: ModelVersion) -> str:
    return str(model.get("triton_model") or model["name"])


def triton_version(model: ModelVersion) -> str | None:
    """The Triton model version a registry version maps to (None: Triton's version policy decides)."""
    found = model.get("triton_version")
    return None if found is None else str(found)


def label(model: ModelVersion) -> str:
    """The public name of a model's backends: its registry identity."""
    return f"model {model['name']!r} version {model['version']!r}"


def backend_label(model: ModelVersion, urls: list[str], url: str) -> str:
    """``label`` plus which backend, when the model has several (never the address)."""
    if len(urls) < 2 or url not in urls:
        return label(model)
    return f"{label(model)} (backend {urls.index(url) + 1} of {len(urls)})"
