"""The backends probe never touches TRITON_URL when it scales to zero (PROBE_TRITON_URL=false)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.backends import monitor as backends
from shared.errors import Unavailable
from shared.services import Services
from shared.settings import Settings

TRITON = "triton.kinfer.svc.cluster.local:80"
OTHER = "triton-a100.gpu.svc.cluster.local:8001"


class _NoDatabase:
    def begin(self) -> Any:
        raise Unavailable("no database in unit tests")

    read = begin


class _NoCache:
    client = None

    def available(self) -> bool:
        return False


class _Pool:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def ready(self, url: str, names: list[str], timeout: float) -> tuple[bool, list[str], str | None]:
        self.asked.append(url)
        return True, [], None


class _Services(Services):
    """Real breakers (per-process: Redis is absent), a fake Triton pool, no database."""

    def __init__(self, settings: Settings, pool: _Pool) -> None:
        super().__init__(settings)
        self.db, self.cache, self.triton = _NoDatabase(), _NoCache(), pool  # type: ignore[assignment]


@pytest.fixture
def pool() -> _Pool:
    return _Pool()


def services(probe_triton_url: bool, pool: _Pool) -> _Services:
    return _Services(
        Settings.from_env(environ={}, triton_url=f"grpc://{TRITON}/", probe_triton_url=probe_triton_url), pool
    )


def test_the_setting_reads_the_environment() -> None:
    assert Settings.from_env(environ={}).probe_triton_url is True
    assert Settings.from_env(environ={"PROBE_TRITON_URL": "false"}).probe_triton_url is False


def test_a_scale_to_zero_triton_is_never_probed(pool: _Pool) -> None:
    svc = services(probe_triton_url=False, pool=pool)
    assert backends.probe(svc) == []
    assert backends.probe(svc, {TRITON: ["iris"], OTHER: ["iris"]})[0]["url"] == OTHER
    health = backends.health(svc)
    assert pool.asked == [OTHER]
    [triton] = health["backends"]
    assert (triton["url"], triton["healthy"], triton["circuit"], triton["last_checked"]) == (
        TRITON,
        True,
        "closed",
        None,
    )
    assert "not probed" in triton["reason"] and health["status"] == "healthy"


def test_a_warm_triton_is_probed_on_the_tick_and_on_health(pool: _Pool) -> None:
    svc = services(probe_triton_url=True, pool=pool)
    assert [r["url"] for r in backends.probe(svc)] == [TRITON]
    assert backends.health(svc)["backends"][0]["last_checked"] is not None
    assert pool.asked == [TRITON, TRITON]
