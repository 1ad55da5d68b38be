"""Resolution without services: alias bodies, weighted picks (sticky, within a few points), load states."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shared import registry
from shared.errors import InvalidInput, NotFound, Unavailable
from shared.lifecycle.aliases import parse_target
from shared.lifecycle.replicas import Replicas


def row(version: str, state: str = "ready") -> dict[str, Any]:
    return {"name": "m", "version": version, "state": state, "state_reason": "boom" if state == "failed" else None}


def test_alias_bodies() -> None:
    assert parse_target({"version": "3"}) == {"3": 100}
    assert parse_target({"versions": {"3": 90, "4": 10}}) == {"3": 90, "4": 10}
    for bad in (
        {"versions": {"3": 90}},
        {"versions": {"3": True, "4": 99}},
        {"versions": {"v3": 100}},
        {},
        {"version": "3", "versions": {"3": 100}},
        {"versions": {str(i): 9 for i in range(11)}},
        [],
    ):
        with pytest.raises(InvalidInput):
            parse_target(bad)


def test_a_split_lands_within_three_points_and_each_caller_keeps_its_version() -> None:
    target = {"alias": "production", "choices": [[90, row("1")], [10, row("2")]]}
    picks = {f"key-{i}": registry.pick(target, f"key-{i}")["version"] for i in range(1000)}
    share = Counter(picks.values())["2"] / 10
    assert 7 <= share <= 13
    assert all(registry.pick(target, key)["version"] == version for key, version in picks.items())
    unkeyed = Counter(registry.pick(target, None)["version"] for _ in range(2000))
    assert 120 <= unkeyed["2"] <= 290, "no route key: a random pick by weight"


def test_a_different_alias_splits_callers_independently() -> None:
    a = {"alias": "a", "choices": [[50, row("1")], [50, row("2")]]}
    b = {"alias": "b", "choices": [[50, row("1")], [50, row("2")]]}
    same = sum(registry.pick(a, f"k{i}")["version"] == registry.pick(b, f"k{i}")["version"] for i in range(400))
    assert 140 < same < 260


def test_states_map_to_what_a_caller_can_do() -> None:
    known = {
        "active": {"1": row("1"), "2": row("2", "loading"), "3": row("3", "failed")},
        "others": {"4": {"status": "deprecated", "state": "ready", "state_reason": None}},
        "aliases": {},
    }
    assert registry._servable(known, "m", "1")["version"] == "1"
    with pytest.raises(Unavailable) as busy:
        registry._servable(known, "m", "2")
    assert busy.value.code == "version_not_ready" and busy.value.retry_after
    for version, code in (("3", "version_failed"), ("4", "version_not_active"), ("5", "version_not_found")):
        with pytest.raises(NotFound) as err:
            registry._servable(known, "m", version)
        assert err.value.code == code
    assert registry._summary(known) == "versions: 1 active, 2 loading, 3 failed, 4 deprecated"


@pytest.mark.parametrize("raw", ["e1313316-7e54-40e4-bb3a-ce2c16530aba", "E1313316-7E54-40E4-BB3A-CE2C16530ABA"])
def test_canonical_ids_parse(raw: str) -> None:
    assert str(registry.parse_id(raw)) == raw.lower()


@pytest.mark.parametrize(
    "raw",
    [
        "e13133167e5440e4bb3ace2c16530aba",
        "{e1313316-7e54-40e4-bb3a-ce2c16530aba}",
        "urn:uuid:e1313316-7e54-40e4-bb3a-ce2c16530aba",
        "e1313316-7e54-40e4-bb3a-ce2c16530ab",
        " e1313316-7e54-40e4-bb3a-ce2c16530aba",
        "１３",
    ],
)
def test_other_spellings_of_an_id_are_unknown_models(raw: str) -> None:
    with pytest.raises(NotFound):
        registry.parse_id(raw)


def test_query_integers_take_ascii_digits_only() -> None:
    from shared import validation as v

    assert v.integer("12", "limit", default=1, lo=0, hi=100) == 12
    for raw in ("١٢", "1_2", " 12", "12\n", "+12", "1e2"):
        with pytest.raises(InvalidInput):
            v.integer(raw, "limit", default=1, lo=0, hi=100)


def test_backends_are_checked_against_the_allow_list_before_any_contact() -> None:
    from shared.settings import Settings

    class FakeServices:
        settings = Settings.from_env(environ={}, triton_url="triton.kinfer.svc.cluster.local:80")

    services: Any = FakeServices()
    models = registry.ModelRegistry(None, None, services.settings)
    models.check_backends_allowed(["grpc://Triton.kinfer.svc.cluster.local:80/"])
    with pytest.raises(InvalidInput) as err:
        models.check_backends_allowed(["127.0.0.1:6379"])
    assert err.value.code == "backend_not_allowed" and "127.0.0.1:6379" in err.value.message
    models.settings = Settings.from_env(environ={"BACKEND_ALLOWLIST": "*.kinfer.svc.cluster.local:80,gpu-*:8001"})
    models.check_backends_allowed(["a.kinfer.svc.cluster.local:80", "gpu-2:8001"])
    with pytest.raises(InvalidInput):
        models.check_backends_allowed(["a.kinfer.svc.cluster.local:5432"], "backend_urls")


@pytest.mark.parametrize("url", ["http://triton:8001", "triton:8001", "grpc://TRITON:8000/", "triton"])
def test_triton_names_the_deployments_own_triton(url: str) -> None:
    """The original platform's clients register ``http://triton:8001``: it is TRITON_URL, always allowed."""
    from shared.endpoints import resolve
    from shared.settings import Settings

    class FakeServices:
        settings = Settings.from_env(environ={"BACKEND_ALLOWLIST": "gpu-*:8001"}, triton_url="10.0.0.7:8001")

    services: Any = FakeServices()
    registry.ModelRegistry(None, None, services.settings).check_backends_allowed([url])
    assert resolve(url, services.settings.triton_url) == "10.0.0.7:8001"
    assert Replicas(None, services.settings).backends_of({"backend_urls": [url, "10.0.0.7:8001"]}) == ["10.0.0.7:8001"]


@pytest.mark.parametrize("url", ["triton:6379", "triton:8002", "triton.evil:8001", "tritonx:8001"])
def test_other_ports_and_hosts_named_triton_stay_refused(url: str) -> None:
    from shared.endpoints import resolve
    from shared.settings import Settings

    class FakeServices:
        settings = Settings.from_env(environ={}, triton_url="10.0.0.7:8001")

    services: Any = FakeServices()
    with pytest.raises(InvalidInput) as err:
        registry.ModelRegistry(None, None, services.settings).check_backends_allowed([url])
    assert err.value.code == "backend_not_allowed" and "triton:8001" in err.value.message
    assert resolve(url, "10.0.0.7:8001") != "10.0.0.7:8001"


def test_one_backend_named_twice_in_other_spellings_is_refused() -> None:
    from shared.settings import Settings

    class FakeServices:
        settings = Settings.from_env(environ={"BACKEND_ALLOWLIST": "gpu-*:8001"}, triton_url="10.0.0.7:8001")

    services: Any = FakeServices()
    models = registry.ModelRegistry(None, None, services.settings)
    for urls in (["triton:8001", "http://10.0.0.7:8001"], ["gpu-1:8001", "grpc://GPU-1:8001/"], ["triton", "TRITON"]):
        with pytest.raises(InvalidInput) as err:
            models.check_backends_allowed(urls, "backend_urls")
        assert err.value.field == "backend_urls" and "twice" in err.value.message, urls


class _FlakyTriton:
    """An async Triton client whose first calls fail as a reconnecting channel does, or that speaks another
    protocol."""

    def __init__(self, failures: int, text: str) -> None:
        self.failures, self.text, self.calls = failures, text, 0

    async def served_models(self, url: str, timeout: float) -> list[str]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(self.text)
        return ["iris"]


@pytest.mark.parametrize(
    "failures,text,own,expect",
    [
        (1, "Socket closed", False, None),  # a retry reaches it: registered cleanly
        (2, "Socket closed", True, "did not answer as Triton right now"),  # our own Triton: never "not Triton"
        (2, "Deadline Exceeded", False, "did not answer as Triton right now"),
        (2, "Failed parsing HTTP/2 (Expected SETTINGS frame", False, "backend_not_triton"),
    ],
)
def test_a_backend_is_called_not_triton_only_when_it_speaks_another_protocol(
    failures: int, text: str, own: bool, expect: str | None
) -> None:
    import socket

    from shared.lifecycle import backends
    from shared.settings import Settings

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    class FakeServices:
        settings = Settings.from_env(environ={}, triton_url=address if own else "10.0.0.7:8001")
        triton = _FlakyTriton(failures, text)

    from shared.clients.aio import LoopThread

    loop = LoopThread("test-registration")
    admin = backends.BackendAdmin(None, FakeServices.triton, loop, None, FakeServices.settings)  # type: ignore[arg-type]
    try:
        if expect == "backend_not_triton":
            with pytest.raises(InvalidInput) as err:
                admin._check(address, "iris", "backend_url")
            assert err.value.code == expect
        else:
            warning = admin._check(address, "iris", "backend_url")
            assert warning is None if expect is None else expect in str(warning)
    finally:
        listener.close()
        loop.close()
