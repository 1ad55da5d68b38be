"""Breakers and the balancer without services: in-process breakers (Redis marked down) and parsed views."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from shared.backends.balancer import Backend, Balancer
from shared.backends.breaker import Breakers, CircuitView, state_keys, view_from
from shared.errors import BackendError, CircuitOpen, InvalidInput, Unavailable


class DownCache:
    """A cache whose Redis is unreachable: breakers must fall back to in-process state."""

    client = None

    def available(self) -> bool:
        return False


class Tally:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def record(self, url: str, outcome: str, seconds: float) -> None:
        self.seen.append((url, outcome))


def make(fail_max: int = 2, reset: float = 30.0) -> Breakers:
    settings = SimpleNamespace(breaker_fail_max=fail_max, breaker_reset_timeout_s=reset)
    return Breakers(settings, DownCache())


def test_in_process_breaker_opens_at_fail_max_and_names_the_backend():
    b = make()
    for _ in range(2):
        b.record_failure("h:1", Unavailable("refused"))
    view = b.views(["h:1"])["h:1"]
    assert view.state == "open" and view.failures == 2 and not view.shared
    assert not b.allows(view)
    err = b.open_error(view, "model 'iris' version '1'")
    assert isinstance(err, CircuitOpen) and "circuit breaker" in err.message
    assert "model 'iris' version '1'" in err.message and "h:1" not in err.message  # never the address
    assert 29 <= err.retry_after <= 30


def test_success_resets_failures_and_trial_closes_after_reset_timeout():
    b = make(reset=0.05)
    b.record_failure("h:1", Unavailable("refused"))
    b.record_success("h:1", b.views(["h:1"])["h:1"])
    assert b.views(["h:1"])["h:1"].failures == 0
    b.record_failure("h:1", Unavailable("refused"))
    b.record_failure("h:1", Unavailable("refused"))
    time.sleep(0.06)
    view = b.views(["h:1"])["h:1"]
    assert view.state == "open" and b.allows(view)
    b.record_success("h:1", view)
    assert b.views(["h:1"])["h:1"].state == "closed"


def test_views_parse_pybreaker_redis_values():
    assert state_keys("h:1")[0] == "kinfer:cb:h:1:pybreaker:state"
    view = view_from("h:1", [b"open", b"5", b"1700000000"])
    assert view == CircuitView("h:1", "open", 5, 1700000000.0, True)
    assert view_from("h:2", [None, None, None]).state == "closed"
    assert view.remaining(30, now=1700000010) == 20


def balancer_with(backends: list[Backend], breakers: Breakers) -> tuple[Balancer, Tally]:
    tally = Tally()
    bal = Balancer(breakers, tally)  # type: ignore[arg-type]

    async def read(urls: list[str]) -> list[Backend]:
        return [b for b in backends if b.url in urls]

    bal._read_async = read  # type: ignore[method-assign]
    bal._met.update(b.url for b in backends)  # seen before: no first-sight readiness probe
    return bal, tally


def candidates(bal: Balancer, urls: list[str], label: str | None = None) -> list[Backend]:
    import asyncio

    return bal.choose(asyncio.run(bal.snapshot_async(urls)), label)


def call(bal: Balancer, urls: list[str], attempt: Any) -> Any:
    import asyncio

    async def run(url: str) -> Any:
        return attempt(url)

    return asyncio.run(bal.call_async(urls, run))


def test_round_robin_skips_open_circuits_and_failed_probes():
    now = time.time()
    backends = [
        Backend("a:1", CircuitView("a:1"), True),
        Backend("b:1", CircuitView("b:1"), None),
        Backend("c:1", CircuitView("c:1", "open", 5, now), True),
        Backend("d:1", CircuitView("d:1"), False),
    ]
    bal, _ = balancer_with(backends, make())
    firsts = [candidates(bal, ["a:1", "b:1", "c:1", "d:1"])[0].url for _ in range(8)]
    assert set(firsts) == {"a:1", "b:1"}
    assert firsts.count("a:1") >= 3 and firsts.count("b:1") >= 3


def test_all_open_raises_circuit_open_with_the_shortest_wait():
    now = time.time()
    backends = [
        Backend("a:1", CircuitView("a:1", "open", 5, now - 20), None),
        Backend("b:1", CircuitView("b:1", "open", 5, now - 5), None),
    ]
    bal, _ = balancer_with(backends, make())
    with pytest.raises(CircuitOpen) as err:
        candidates(bal, ["a:1", "b:1"], label="model 'm' version '2'")
    assert "model 'm' version '2'" in err.value.message and "a:1" not in err.value.message
    assert err.value.retry_after <= 10.5


def test_one_retry_elsewhere_on_connection_failure_but_not_on_caller_errors():
    backends = [Backend("a:1", CircuitView("a:1"), None), Backend("b:1", CircuitView("b:1"), None)]
    breakers = make()
    bal, tally = balancer_with(backends, breakers)
    calls: list[str] = []

    def flaky(url: str) -> str:
        calls.append(url)
        if len(calls) == 1:
            raise Unavailable(f"{url} refused")
        return url

    assert call(bal, ["a:1", "b:1"], flaky) == calls[1] != calls[0]
    assert [o for _, o in tally.seen] == ["failure", "success"]
    assert breakers.views([calls[0]])[calls[0]].failures == 1

    def bad_input(url: str) -> None:
        raise InvalidInput("wrong shape")

    with pytest.raises(InvalidInput):
        call(bal, ["a:1", "b:1"], bad_input)
    assert breakers.views(["a:1", "b:1"])["a:1"].failures + breakers.views(["b:1"])["b:1"].failures == 1

    def broken(url: str) -> None:
        raise BackendError("internal")

    with pytest.raises(BackendError):  # not a connection failure: no retry
        call(bal, ["a:1", "b:1"], broken)


def test_an_open_circuit_met_first_is_closed_when_the_backend_answers_readiness():
    import asyncio

    asked: list[str] = []

    async def ready(url: str) -> bool:
        asked.append(url)
        return url == "up:1"

    breakers = make()
    for url in ("up:1", "down:1"):
        for _ in range(2):
            breakers.record_failure(url, Unavailable("refused"))
    bal = Balancer(breakers, Tally(), ready=ready)  # type: ignore[arg-type]
    seen = asyncio.run(bal.snapshot_async(["up:1", "down:1"]))
    assert [b.circuit.state for b in seen] == ["closed", "open"] and asked == ["up:1", "down:1"]
    assert breakers.views(["up:1"])["up:1"].state == "closed"
    breakers.record_failure("up:1", Unavailable("refused"))
    breakers.record_failure("up:1", Unavailable("refused"))
    bal.forget("up:1")
    assert asyncio.run(bal.snapshot_async(["up:1"]))[0].circuit.state == "open"  # only the first sight probes
    assert asked == ["up:1", "down:1"]


def test_one_failure_shared_by_coalesced_callers_counts_once():
    import asyncio

    breakers = make(fail_max=3)
    bal = Balancer(breakers, Tally())  # type: ignore[arg-type]
    failure = Unavailable("the Triton backend of model 'm' version '1' is unavailable")

    async def attempt(url: str) -> None:
        raise failure

    async def callers() -> list[BaseException]:
        return await asyncio.gather(*(bal.call_async(["h:1"], attempt) for _ in range(5)), return_exceptions=True)

    assert all(a is failure for a in asyncio.run(callers()))
    assert breakers.views(["h:1"])["h:1"].failures == 1


def test_a_timeout_on_a_backend_that_does_not_answer_readiness_opens_its_circuit_at_once():
    """A frozen Triton (SIGSTOP): each call waits TRITON_TIMEOUT_S and coalesced callers share one failure,
    so counting timeouts alone took BREAKER_FAIL_MAX x TRITON_TIMEOUT_S to open (never within 20 s); a
    timeout whose backend then misses a readiness check is a hung backend, and later callers get 503 at once."""
    import asyncio

    from shared.errors import BackendTimeout

    answers = {"hung:1": False, "slow:1": True}

    async def ready(url: str) -> bool:
        if not answers[url]:
            await asyncio.sleep(30)  # frozen: no answer at all (the check gives up after FIRST_PROBE_TIMEOUT_S)
        return True

    breakers = make(fail_max=5)
    bal = Balancer(breakers, Tally(), ready=ready)  # type: ignore[arg-type]

    async def attempt(url: str) -> None:
        raise BackendTimeout("the Triton backend of model 'm' version '1' did not answer in time")

    for url in ("hung:1", "slow:1"):
        with pytest.raises(BackendTimeout):
            asyncio.run(bal.call_async([url], attempt))
    views = breakers.views(["hung:1", "slow:1"])
    assert views["hung:1"].state == "open" and not breakers.allows(views["hung:1"])
    assert views["slow:1"].state == "closed" and views["slow:1"].failures == 0  # a slow model's, not the backend's
    for _ in range(8):  # however many: one tenant's slow version never opens the circuit other models share
        with pytest.raises(BackendTimeout):
            asyncio.run(bal.call_async(["slow:1"], attempt))
    assert breakers.views(["slow:1"])["slow:1"].state == "closed"
    started = time.monotonic()
    with pytest.raises(CircuitOpen):
        asyncio.run(bal.call_async(["hung:1"], attempt))
    assert time.monotonic() - started < 0.5
