"""The backends probe never touches TRITON_URL when it scales to zero (PROBE_TRITON_URL=false)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.backends.breaker import Breakers
from shared.backends.monitor import BackendMonitor
from shared.clients.aio import LoopThread
from shared.errors import Unavailable
from shared.settings import Settings

TRITON = "triton.kinfer.svc.cluster.local:80"
OTHER = "triton-a100.gpu.svc.cluster.local:8001"


class _NoRegistry:
    def active_backends(self) -> Any:
        raise Unavailable("no database in unit tests")


class _NoCache:
    client = None

    def available(self) -> bool:
        return False


class _Pool:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def ready(self, url: str, names: list[str], timeout: float) -> tuple[bool, list[str], str | None]:
        self.asked.append(url)
        return True, [], None


@pytest.fixture
def pool() -> _Pool:
    return _Pool()


_LOOP = LoopThread("test-probes")


def monitor(probe_triton_url: bool, pool: _Pool) -> BackendMonitor:
    """Real breakers (per-process: Redis is absent), a fake async Triton client, no database."""
    settings = Settings.from_env(environ={}, triton_url=f"grpc://{TRITON}/", probe_triton_url=probe_triton_url)
    cache = _NoCache()
    return BackendMonitor(_NoRegistry(), pool, _LOOP, Breakers(settings, cache), cache, settings)  # type: ignore[arg-type]


def test_the_setting_reads_the_environment() -> None:
    assert Settings.from_env(environ={}).probe_triton_url is True
    assert Settings.from_env(environ={"PROBE_TRITON_URL": "false"}).probe_triton_url is False


def test_a_scale_to_zero_triton_is_never_probed(pool: _Pool) -> None:
    mon = monitor(probe_triton_url=False, pool=pool)
    assert mon.probe() == []
    assert mon.probe({TRITON: ["iris"], OTHER: ["iris"]})[0]["url"] == OTHER
    health = mon.health()
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
    mon = monitor(probe_triton_url=True, pool=pool)
    assert [r["url"] for r in mon.probe()] == [TRITON]
    assert mon.health()["backends"][0]["last_checked"] is not None
    assert pool.asked == [TRITON, TRITON]


def test_backends_listed_in_probe_skip_backends_are_never_probed_nor_checked(pool: _Pool) -> None:
    """A second scale-to-zero Service (triton-llm): probing it would wake it and keep it up."""
    from shared.lifecycle.backends import BackendAdmin

    llm = "triton-llm.kinfer.svc.cluster.local:80"
    settings = Settings.from_env(
        environ={"PROBE_SKIP_BACKENDS": f" grpc://{llm.upper()}/ ,other.example:1"}, triton_url=f"grpc://{TRITON}/"
    )
    assert settings.probe_skip_backends == (f"grpc://{llm.upper()}/", "other.example:1")
    cache = _NoCache()
    mon = BackendMonitor(_NoRegistry(), pool, _LOOP, Breakers(settings, cache), cache, settings)  # type: ignore[arg-type]
    assert [r["url"] for r in mon.probe({TRITON: ["iris"], llm: ["tiny_lm"]})] == [TRITON]
    assert pool.asked == [TRITON]
    admin = BackendAdmin.__new__(BackendAdmin)
    admin.settings = settings
    admin._check = lambda *a: pytest.fail("a scale-to-zero backend was checked at registration")  # type: ignore[method-assign]
    row: Any = {"backend_urls": [f"grpc://{llm}"], "triton_model": "tiny_lm"}
    assert admin.check_registration(row) == []
