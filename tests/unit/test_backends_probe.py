"""The backends probe never touches TRITON_URL when it scales to zero (PROBE_TRITON_URL=false)."""

from __future__ import annotations

from typing import Any

import pytest

from shared import backends
from shared.errors import Unavailable
from shared.settings import Settings

TRITON = "triton.kinfer.svc.cluster.local:80"
OTHER = "triton-a100.gpu.svc.cluster.local:8001"


class _NoDatabase:
    def begin(self) -> Any:
        raise Unavailable("no database in unit tests")


class _NoCache:
    client = None

    def available(self) -> bool:
        return False


class _Services:
    def __init__(self, settings: Settings) -> None:
        self.settings, self.db, self.cache = settings, _NoDatabase(), _NoCache()
        self._components: dict[str, Any] = {}

    def component(self, name: str, factory: Any) -> Any:
        if name not in self._components:
            self._components[name] = factory(self)
        return self._components[name]


class _Pool:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def ready(self, url: str, names: list[str], timeout: float) -> tuple[bool, list[str], str | None]:
        self.asked.append(url)
        return True, [], None


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> _Pool:
    fake = _Pool()
    monkeypatch.setattr(backends, "triton_pool", lambda services: fake)
    return fake


def services(probe_triton_url: bool) -> _Services:
    return _Services(Settings.from_env(environ={}, triton_url=f"grpc://{TRITON}/",
                                       probe_triton_url=probe_triton_url))


def test_the_setting_reads_the_environment() -> None:
    assert Settings.from_env(environ={}).probe_triton_url is True
    assert Settings.from_env(environ={"PROBE_TRITON_URL": "false"}).probe_triton_url is False


def test_a_scale_to_zero_triton_is_never_probed(pool: _Pool) -> None:
    svc = services(probe_triton_url=False)
    assert backends.probe(svc) == []
    assert backends.probe(svc, {TRITON: ["iris"], OTHER: ["iris"]})[0]["url"] == OTHER
    health = backends.health(svc)
    assert pool.asked == [OTHER]
    [triton] = health["backends"]
    assert (triton["url"], triton["healthy"], triton["circuit"], triton["last_checked"]) == (
        TRITON, True, "closed", None)
    assert "not probed" in triton["reason"] and health["status"] == "healthy"


def test_a_warm_triton_is_probed_on_the_tick_and_on_health(pool: _Pool) -> None:
    svc = services(probe_triton_url=True)
    assert [r["url"] for r in backends.probe(svc)] == [TRITON]
    assert backends.health(svc)["backends"][0]["last_checked"] is not None
    assert pool.asked == [TRITON, TRITON]
