"""The resolver's in-process cache of registry targets, with a fake registry: warm models cost no
registry read, a miss reads once however many wait, an unknown model is forgotten."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.clients.aio import SingleFlight
from shared.errors import NotFound
from shared.inference import resolve
from shared.inference.resolve import Resolver
from shared.settings import Settings


class _Registry:
    """``resolve_target`` answers one version of every name but ``gone``; counts its reads."""

    def __init__(self) -> None:
        self.reads = 0

    def resolve_target(self, name: str, version: str | None = None) -> dict[str, Any]:
        self.reads += 1
        if name == "gone":
            raise NotFound(f"model {name!r} not found")
        return {"alias": None, "choices": [(1, {"name": name, "version": version or "1"})]}


def _resolver(registry: _Registry, **settings: Any) -> Resolver:
    return Resolver(registry, None, SingleFlight(), Settings.from_env(environ={}, **settings))  # type: ignore[arg-type]


def test_a_warm_model_costs_no_registry_read_and_each_resolver_has_its_own_cache() -> None:
    registry = _Registry()
    resolver = _resolver(registry)

    async def many() -> list[dict[str, Any]]:
        return await asyncio.gather(*(resolver.resolve_async("iris", "2") for _ in range(20)))

    answers = asyncio.run(many())
    assert all(a == {"name": "iris", "version": "2"} for a in answers) and registry.reads == 1
    assert asyncio.run(resolver.resolve_async("iris", "2")) == {"name": "iris", "version": "2"}
    assert registry.reads == 1
    assert asyncio.run(_resolver(registry).resolve_async("iris", "2")) == {"name": "iris", "version": "2"}
    assert registry.reads == 2


def test_an_unknown_model_is_404_and_forgotten() -> None:
    registry = _Registry()
    resolver = _resolver(registry)
    resolver._models[("gone", None)] = (0.0, {"choices": [(1, {"name": "gone", "version": "1"})]})
    with pytest.raises(NotFound):
        asyncio.run(resolver.resolve_async("gone"))
    assert ("gone", None) not in resolver._models


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve, "MAX_CACHED", 3)
    resolver = _resolver(_Registry())
    for name in ("a", "b", "c", "d"):
        asyncio.run(resolver.resolve_async(name))
    assert list(resolver._models) == [("d", None)]


def test_backend_urls_default_to_triton_url_and_drop_duplicates() -> None:
    resolver = _resolver(_Registry(), triton_url="triton:8001")
    assert resolver.backend_urls({}) == ["triton:8001"]
    assert resolver.backend_urls({"backend_urls": ["grpc://a:1", "a:1", "b:2"]}) == ["a:1", "b:2"]
