"""Token limits and usage on real Redis and PostgreSQL: a key with tokens_per_minute=100 is refused once 100
tokens are recorded and a key without one never is, parallel requests reserve their tokens at admission so
together they never pass the limit, settling gives back what was not used (also after the window rolled),
keys do not share windows, the usage totals are the tokens actually used, Redis or PostgreSQL down fails
nothing; and the keys API (``tokens_per_minute`` on create, ``PATCH /v1/keys/{id}``, ``GET /v1/usage``) with
its access rules."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from limits import RateLimitItemPerMinute

from shared.access.auth import Principal
from shared.access.ratelimit import RateLimiter
from shared.access.tokens import KEY_PREFIX, Reservation, TokenMeter, redis_keys
from shared.clients.cache import Cache
from shared.clients.db import Database
from shared.errors import RateLimited
from shared.services import Services, reset_services
from shared.settings import Settings
from tests.conftest import function_client

pytestmark = pytest.mark.integration


@pytest.fixture
def services(base_settings: Settings) -> Iterator[Services]:
    settings = dataclasses.replace(base_settings, auth_required=True, auth_cache_ttl_s=0)
    yield reset_services(settings)
    reset_services(None)


@pytest.fixture(scope="module")
def client() -> Any:
    return function_client("keys", "manage_api_keys")


def _key(services: Services, scopes: str = "infer", tokens_per_minute: int | None = None) -> tuple[str, str, Principal]:
    """A new key: (id, secret, its principal as the authenticator builds it)."""
    record, secret = services.keys.create_key(
        f"tok-{uuid.uuid4().hex[:8]}", scopes, tokens_per_minute=tokens_per_minute
    )
    principal = services.auth.principal_for(secret)
    assert principal is not None
    return record["id"], secret, principal


def _remaining(services: Services, key_id: str, limit: int) -> int:
    """What ``limits``' own limiter reads of the key's token window (the same Redis keys)."""
    limiter = RateLimiter(services.cache, key_prefix=KEY_PREFIX).limiter
    return int(limiter.get_window_stats(RateLimitItemPerMinute(limit), key_id).remaining)


def test_a_key_with_100_tokens_per_minute_is_refused_once_100_are_recorded(services: Services) -> None:
    key_id, _, principal = _key(services, tokens_per_minute=100)
    assert principal.tokens_per_minute == 100  # the key cache carries the limit
    meter = services.tokens

    async def run() -> RateLimited:
        reservation = await meter.admit(principal, "tiny_lm", 99)
        await meter.record(principal, "tiny_lm", 60, 39, reservation)
        reservation = await meter.admit(principal, "tiny_lm", 1)  # 99 of 100: room for one more
        await meter.record(principal, "tiny_lm", 0, 1, reservation)
        with pytest.raises(RateLimited) as refused:
            await meter.admit(principal, "tiny_lm", 1)
        return refused.value

    err = run_once(run())
    assert err.status == 429 and err.code == "rate_limited" and err.field == "tokens_per_minute"
    # 100 tokens counted in this minute: they leave the window once it has rolled into the previous minute
    assert err.retry_after is not None and 55 <= err.retry_after <= 60.5
    assert f"retry in {math.ceil(err.retry_after)} s" in err.message and "100 tokens per minute" in err.message
    assert err.headers["X-RateLimit-Remaining-Tokens"] == "0"
    assert _remaining(services, key_id, 100) == 0


def test_the_request_that_crosses_the_limit_is_charged_in_full(services: Services) -> None:
    key_id, _, principal = _key(services, tokens_per_minute=100)

    async def run() -> float:
        reservation = await services.tokens.admit(principal, "tiny_lm", 30)
        await services.tokens.record(principal, "tiny_lm", 20, 110, reservation)  # used more: all 130 count
        return (await services.tokens.window(key_id, 100)).used

    assert run_once(run()) == 130


def test_a_key_without_a_limit_is_never_refused(services: Services) -> None:
    key_id, _, principal = _key(services)
    assert principal.tokens_per_minute is None

    async def run() -> None:
        for _ in range(5):
            assert await services.tokens.admit(principal, "tiny_lm", 100_000) is None
            await services.tokens.record(principal, "tiny_lm", 50_000, 50_000)
        await services.tokens.admit(principal, "tiny_lm", 100_000)

    run_once(run())
    assert services.cache.client.keys(f"{KEY_PREFIX}:*{key_id}*") == []  # no window kept for it


def test_each_key_has_its_own_window(services: Services) -> None:
    spent_id, _, spent = _key(services, tokens_per_minute=100)
    other_id, _, other = _key(services, tokens_per_minute=100)

    async def run() -> None:
        await services.tokens.record(spent, "tiny_lm", 100, 0)
        with pytest.raises(RateLimited):
            await services.tokens.admit(spent, "tiny_lm", 1)
        await services.tokens.release(await services.tokens.admit(other, "tiny_lm", 100))

    run_once(run())
    assert _remaining(services, spent_id, 100) == 0 and _remaining(services, other_id, 100) == 100


def test_parallel_requests_reserve_their_tokens_so_together_they_stay_within_the_limit(services: Services) -> None:
    """The attacker's finding: 10 parallel requests reserving 12 tokens each against 60 a minute. Exactly 5 are
    admitted (two processes' meters, one Redis window); settled at the 6 they used, room is back for more; the
    window ``limits`` reads and the usage totals hold the tokens actually used."""
    key_id, _, principal = _key(services, tokens_per_minute=60)
    other = TokenMeter(Cache(services.settings), services.db)  # a second process

    async def one(meter: TokenMeter) -> Reservation | RateLimited | None:
        try:
            return await meter.admit(principal, "tiny_lm", 12)
        except RateLimited as exc:
            return exc

    async def run() -> None:
        got = await asyncio.gather(*(one(services.tokens if i % 2 else other) for i in range(10)))
        admitted = [r for r in got if isinstance(r, Reservation)]
        refused = [r for r in got if isinstance(r, RateLimited)]
        assert len(admitted) == 5 and len(refused) == 5
        assert all(r.field == "tokens_per_minute" and r.retry_after and r.retry_after >= 1 for r in refused)
        assert _remaining(services, key_id, 60) == 0  # reserved in full
        await asyncio.gather(*(services.tokens.record(principal, "tiny_lm", 2, 4, r) for r in admitted))
        assert _remaining(services, key_id, 60) == 30  # settled: 5 x 6 used
        again = await asyncio.gather(*(one(services.tokens) for _ in range(3)))
        assert sum(isinstance(r, Reservation) for r in again) == 2  # 30 + 2 x 12 = 54; a third would pass 60
        for r in again:
            if isinstance(r, Reservation):
                await services.tokens.release(r)  # failed before answering: given back whole
        assert _remaining(services, key_id, 60) == 30

    run_once(run())
    services.tokens.flush()
    report = services.tokens.usage_report({"key_id": key_id}, principal)
    assert report["totals"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "requests": 5}


def test_a_refund_reaches_the_reservation_after_the_window_rolled(services: Services) -> None:
    """A generation admitted late in a minute settles in the next: its unused tokens come off the previous
    minute's counter, the one that holds them, never below zero."""
    key_id, _, principal = _key(services, tokens_per_minute=100)
    previous, current = redis_keys(KEY_PREFIX, key_id, 100)

    async def run() -> tuple[float, float]:
        reservation = await services.tokens.admit(principal, "tiny_lm", 80)
        assert reservation is not None and not reservation.local
        # 70 s pass: the counter holding the reservation has 50 s left, and rolls at the next call
        services.cache.client.pexpire(current, 50_000)
        moved = dataclasses.replace(reservation, expires=reservation.expires - 70)
        await services.tokens.record(principal, "tiny_lm", 10, 20, moved)  # 50 of 80 unused
        after = await services.tokens.window(key_id, 100)
        assert (after.previous, after.current) == (30, 0)
        await services.tokens.record(principal, "tiny_lm", 1, 0, dataclasses.replace(moved, tokens=1000))
        return after.used, (await services.tokens.window(key_id, 100)).previous

    used, left = run_once(run())
    assert used == pytest.approx(30 * 50 / 60, abs=0.5) and left == 0  # the second refund stopped at zero
    assert int(services.cache.client.get(previous) or 0) == 0


def test_usage_totals_are_the_recorded_tokens_per_key_and_model(services: Services) -> None:
    a_id, _, a = _key(services, tokens_per_minute=1000)
    b_id, _, b = _key(services)
    admin = _key(services, "admin")[2]

    async def run() -> None:
        await services.tokens.record(a, "tiny_lm", 5, 7)
        await services.tokens.record(a, "tiny_lm", 3, 4)
        await services.tokens.record(a, "text_sentiment", 10, 0)
        await services.tokens.record(b, "tiny_lm", 1, 1)

    run_once(run())
    services.tokens.flush()
    report = services.tokens.usage_report({"key_id": a_id}, admin)
    rows = {(r["key_id"], r["model"]): r for r in report["usage"]}
    assert set(rows) == {(a_id, "tiny_lm"), (a_id, "text_sentiment")}
    assert rows[(a_id, "tiny_lm")] | {} == {
        "key_id": a_id, "model": "tiny_lm", "prompt_tokens": 8, "completion_tokens": 11, "total_tokens": 19,
        "requests": 2,
    }  # fmt: skip
    assert report["totals"] == {"prompt_tokens": 18, "completion_tokens": 11, "total_tokens": 29, "requests": 3}
    hourly = services.tokens.usage_report({"key_id": a_id, "by": "hour", "model": "tiny_lm"}, admin)
    assert sum(r["total_tokens"] for r in hourly["usage"]) == 19 and all("hour" in r for r in hourly["usage"])
    assert services.tokens.usage_report({"key_id": b_id}, b)["totals"]["total_tokens"] == 2
    old = services.tokens.usage_report({"key_id": a_id, "until": "2020-01-01T00:00:00Z"}, admin)
    assert old["usage"] == [] and old["totals"]["total_tokens"] == 0
    everyone = services.tokens.usage_report({"limit": "10000"}, admin)
    assert {a_id, b_id} <= {r["key_id"] for r in everyone["usage"]}


def test_tallies_from_two_flushes_add_up(services: Services) -> None:
    key_id, _, principal = _key(services)
    for prompt in (1, 2):
        run_once(services.tokens.record(principal, "tiny_lm", prompt, 10))
        services.tokens.flush()
    report = services.tokens.usage_report({"key_id": key_id}, principal)
    assert report["totals"] == {"prompt_tokens": 3, "completion_tokens": 20, "total_tokens": 23, "requests": 2}


def test_redis_down_limits_in_process_and_usage_still_reaches_postgresql(services: Services) -> None:
    key_id, _, principal = _key(services, tokens_per_minute=100)
    down = Cache(dataclasses.replace(services.settings, redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.2))
    meter = TokenMeter(down, services.db)

    async def run() -> None:
        reservation = await meter.admit(principal, "tiny_lm", 60)
        assert reservation is not None and reservation.local  # reserved in this process's window
        with pytest.raises(RateLimited):
            await meter.admit(principal, "tiny_lm", 41)
        await meter.record(principal, "tiny_lm", 50, 50, reservation)
        with pytest.raises(RateLimited):
            await meter.admit(principal, "tiny_lm", 1)

    run_once(run())
    assert meter.flush() == 1
    assert services.tokens.usage_report({}, principal)["totals"]["total_tokens"] == 100
    assert _remaining(services, key_id, 100) == 100  # the shared window never saw it


def test_postgresql_down_fails_nothing_and_the_tally_is_written_later(services: Services) -> None:
    key_id, _, principal = _key(services)
    unreachable = Database(
        dataclasses.replace(services.settings, database_url="postgresql+pg8000://u@127.0.0.1:1/none")
    )
    meter = TokenMeter(services.cache, unreachable)
    run_once(meter.record(principal, "tiny_lm", 4, 6))
    assert meter.flush() == 0 and len(meter._pending) == 1
    meter.db = services.db
    assert meter.flush() == 1
    assert services.tokens.usage_report({}, principal)["totals"]["total_tokens"] == 10


def run_once(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the API ------------------------------------------------------------------------------------------------


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_keys_take_a_token_limit_on_create_and_patch_audited(client: Any, services: Services) -> None:
    admin = _auth(_key(services, "admin")[1])
    name = f"tok-{uuid.uuid4().hex[:8]}"
    created = client.post("/v1/keys", json={"name": name, "scopes": ["infer"], "tokens_per_minute": 100}, headers=admin)
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["tokens_per_minute"] == 100 and key["rate_limit_per_minute"] is None
    me = client.get("/v1/keys/self", headers=_auth(key["key"])).json()
    assert me["tokens_per_minute"] == 100
    for bad in (0, 100_000_001, "100", True):
        resp = client.post("/v1/keys", json={"name": name, "scopes": "infer", "tokens_per_minute": bad}, headers=admin)
        assert resp.status_code == 400 and resp.json()["field"] == "tokens_per_minute", resp.text

    patched = client.patch(f"/v1/keys/{key['id']}", json={"tokens_per_minute": 500}, headers=admin)
    assert patched.status_code == 200 and patched.json()["tokens_per_minute"] == 500
    assert services.auth.principal_for(key["key"]).tokens_per_minute == 500  # type: ignore[union-attr]
    cleared = client.patch(f"/v1/keys/{key['id']}", json={"tokens_per_minute": None, "rate_limit_per_minute": 60},
                           headers=admin)  # fmt: skip
    assert cleared.json()["tokens_per_minute"] is None and cleared.json()["rate_limit_per_minute"] == 60
    same = client.patch(f"/v1/keys/{key['id']}", json={"rate_limit_per_minute": 60}, headers=admin)
    assert same.status_code == 200  # nothing changed: nothing audited
    audit = client.get(f"/v1/audit?target=key:{key['id']}", headers=admin).json()["entries"]
    assert [e["action"] for e in audit] == ["key.update", "key.update", "key.create"]
    assert audit[-1]["after"]["tokens_per_minute"] == 100
    assert (audit[1]["before"]["tokens_per_minute"], audit[1]["after"]["tokens_per_minute"]) == (100, 500)
    assert audit[0]["after"]["tokens_per_minute"] is None and "key" not in audit[0]["after"]

    for body, field in (({}, "body"), ({"name": "x"}, "name"), ({"tokens_per_minute": 0}, "tokens_per_minute")):
        resp = client.patch(f"/v1/keys/{key['id']}", json=body, headers=admin)
        assert resp.status_code == 400 and resp.json()["field"] == field, resp.text
    assert client.patch(f"/v1/keys/{uuid.uuid4()}", json={"tokens_per_minute": 5}, headers=admin).status_code == 404
    assert (
        client.patch(f"/v1/keys/{key['id']}", json={"tokens_per_minute": 5}, headers=_auth(key["key"])).status_code
        == 403
    )


def test_usage_over_http_a_key_its_own_an_admin_any(client: Any, services: Services) -> None:
    a_id, a_secret, a = _key(services)
    b_id, _, b = _key(services)
    admin = _auth(_key(services, "admin")[1])

    async def run() -> None:
        await services.tokens.record(a, "tiny_lm", 12, 30)
        await services.tokens.record(b, "tiny_lm", 1, 2)

    run_once(run())
    services.tokens.flush()
    mine = client.get("/v1/usage", headers=_auth(a_secret))
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["key_id"] == a_id and body["by"] == "model" and body["truncated"] is False
    assert [(r["key_id"], r["model"], r["total_tokens"]) for r in body["usage"]] == [(a_id, "tiny_lm", 42)]
    assert body["totals"] == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42, "requests": 1}
    refused = client.get(f"/v1/usage?key_id={b_id}", headers=_auth(a_secret))
    assert refused.status_code == 403
    theirs = client.get(f"/v1/usage?key_id={b_id}&by=hour", headers=admin).json()
    assert theirs["totals"]["total_tokens"] == 3 and theirs["usage"][0]["hour"].endswith(":00:00+00:00")
    every = client.get("/v1/usage?model=tiny_lm&limit=10000", headers=admin).json()
    assert {a_id, b_id} <= {r["key_id"] for r in every["usage"]}
    bad = client.get("/v1/usage?since=soon", headers=admin)
    assert bad.status_code == 400 and bad.json()["field"] == "since"
    assert client.get("/v1/usage?colour=red", headers=admin).status_code == 400
    assert client.get("/v1/usage").status_code == 401
