"""Token metering without Redis or PostgreSQL: the sliding window arithmetic (what counts, when a spent window
frees up), the in-process fallback, the usage tallies kept across a database outage, and who may read whose
usage."""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from shared.access import keys as keys_mod
from shared.access import tokens
from shared.access.auth import Principal
from shared.access.tokens import WINDOW_S, LocalWindow, TokenMeter, Window
from shared.errors import Forbidden, InvalidInput, RateLimited

# -- the window arithmetic --------------------------------------------------------------------------------


def test_the_weighted_count_takes_the_previous_minutes_share_still_inside_the_window() -> None:
    window = Window(100, previous=60, previous_ttl=30.0, current=20, current_ttl=90.0)
    assert window.used == 60 * 30 / 60 + 20 == 50.0
    assert window.remaining == 50 and not window.spent and window.retry_after() == 0.0
    assert Window(100, current=100, current_ttl=100.0).spent
    assert Window(100, current=99, current_ttl=100.0).remaining == 1
    assert Window(100, current=250, current_ttl=100.0).remaining == 0  # an overshoot never goes negative


def _frees_up_after(window: LocalWindow, limit: int, now: float, wait: float) -> None:
    """Just before ``now + wait`` the window is still spent; just after it has room."""
    assert window.charge(limit, 0, now + max(0.0, wait - 0.05)).spent
    assert not window.charge(limit, 0, now + wait + 0.05).spent


@pytest.mark.parametrize(
    ("charges", "limit"),
    [
        ([(0.0, 100)], 100),  # spent at once: wait for the minute to roll, then for its count to decay
        ([(0.0, 130)], 100),  # overshot by 30: longer
        ([(0.0, 500)], 100),  # far over: nearly the whole next minute
        ([(0.0, 70), (70.0, 60)], 100),  # the previous minute's 70 decays under the current 60
        ([(0.0, 99), (1.0, 1)], 100),  # spent by its last token: free once the minute rolls
        ([(0.0, 40), (65.0, 100)], 100),  # the current minute alone is over
    ],
)
def test_retry_after_is_when_the_window_has_room_again(charges: list[tuple[float, int]], limit: int) -> None:
    window = LocalWindow()
    now = 1000.0
    for at, amount in charges:
        state = window.charge(limit, amount, now + at)
    at = now + charges[-1][0]
    assert state.spent
    wait = state.retry_after()
    assert 0 < wait <= 2 * WINDOW_S
    # the state read again later answers the same moment
    later = window.charge(limit, 0, at + wait / 2)
    assert abs(later.retry_after() - wait / 2) < 0.01
    fresh = LocalWindow()
    for at_, amount in charges:
        fresh.charge(limit, amount, now + at_)
    _frees_up_after(fresh, limit, at, wait)


def test_the_local_window_shifts_like_limits_and_forgets_after_two_minutes() -> None:
    window = LocalWindow()
    first = window.charge(100, 40, 0.0)
    assert (first.current, first.current_ttl, first.previous) == (40, 2 * WINDOW_S, 0)
    shifted = window.charge(100, 0, 61.0)  # the current minute is over: it becomes the previous one
    assert (shifted.previous, shifted.current) == (40, 0)
    assert shifted.previous_ttl == pytest.approx(59.0) and shifted.used == pytest.approx(40 * 59 / 60)
    assert window.charge(100, 0, 200.0).used == 0


def test_a_reservation_fits_while_the_whole_tokens_counted_plus_it_stay_within_the_limit() -> None:
    window = Window(60, previous=30, previous_ttl=30.0, current=33, current_ttl=100.0)  # 15 + 33 = 48 used
    assert window.fits(12) and not window.fits(13)
    assert Window(60, previous=1, previous_ttl=59.0, current=48, current_ttl=100.0).fits(12)  # 48.98: 48 counted
    assert window.retry_after(12) == 0.0 and window.retry_after(14) == pytest.approx(2.0)  # once 15 decays to 14


@pytest.mark.parametrize(
    ("charges", "limit", "reserve"),
    [
        ([(0.0, 50)], 60, 20),  # 50 + 20 > 60: once the minute rolls and 50 has decayed under 41
        ([(0.0, 50)], 60, 60),  # the whole limit: once the 50 has left the window entirely (almost)
        ([(0.0, 30), (70.0, 25)], 60, 12),  # the previous minute's 30 decays under the current 25
        ([(0.0, 10), (65.0, 55)], 60, 10),  # the current minute alone leaves no room: after its shift
    ],
)
def test_a_refused_reservation_is_told_when_it_would_fit(
    charges: list[tuple[float, int]], limit: int, reserve: int
) -> None:
    window, now = LocalWindow(), 1000.0
    for at, amount in charges:
        window.charge(limit, amount, now + at)
    at = now + charges[-1][0]
    state, until = window.admit(limit, reserve, at)
    assert until is None and not state.fits(reserve)
    wait = state.retry_after(reserve)
    assert 0 < wait <= 2 * WINDOW_S
    assert window.admit(limit, reserve, at + max(0.0, wait - 0.05))[1] is None  # still no room just before
    assert window.admit(limit, reserve, at + wait + 0.05)[1] is not None  # room just after


def test_the_local_window_admits_reservations_until_they_fill_the_limit_and_refunds_free_room() -> None:
    window = LocalWindow()
    granted = [window.admit(60, 12, 0.0)[1] for _ in range(10)]
    assert sum(until is not None for until in granted) == 5  # 5 x 12 = 60: the sixth would pass the limit
    for until in granted[:5]:
        assert until == 2 * WINDOW_S  # the counter the reservation went into
        window.refund(60, 6, until, 1.0)  # each used 6 of its 12
    assert window.charge(60, 0, 1.0).used == 30
    assert [window.admit(60, 12, 2.0)[1] is not None for _ in range(3)] == [True, True, False]  # 30 + 24 = 54


def test_a_refund_follows_the_reservation_into_the_previous_minute_and_never_goes_below_zero() -> None:
    window = LocalWindow()
    _, until = window.admit(100, 50, 0.0)
    assert until is not None
    window.charge(100, 5, 70.0)  # the minute rolled at 60 s: the 50 are the previous minute's now
    state = window.refund(100, 40, until, 70.0)
    assert (state.previous, state.current) == (10, 5)
    assert window.refund(100, 40, until, 71.0).previous == 0  # 10 were left: not below zero
    assert window.refund(100, 5, 999.0, 71.0).current == 5  # a counter it never went into: nothing
    state = window.refund(100, 5, until, until + 1)  # its counter has expired: nothing to take back
    assert (state.previous, state.current) == (5, 0)  # the later 5 (the previous minute since 121 s) are untouched


def test_reserve_for_is_the_prompt_estimate_plus_max_tokens() -> None:
    assert tokens.reserve_for("Beautiful is", 512) == 3 + 512  # 12 bytes / 4 beats 2 words
    assert tokens.reserve_for("a b c d e f", 4) == 6 + 4  # 6 words beat 11 bytes / 4
    assert tokens.reserve_for("x", None) == 1 + tokens.DEFAULT_MAX_TOKENS  # the model's default max_tokens
    assert tokens.reserve_for("x" * 32768, 1) == 8192 + 1  # one long "word" is not one token
    assert tokens.reserve_for("héllo", 0) == 2  # UTF-8 bytes: 6


def test_redis_keys_are_limits_own_layout() -> None:
    from limits import RateLimitItemPerMinute

    item = RateLimitItemPerMinute(250)
    previous, current = tokens.redis_keys("kinfer:tpm", "k1", 250)
    assert current == "kinfer:tpm:{" + item.key_for("k1") + "}" and previous == current + "/-1"


# -- the meter with Redis and PostgreSQL unreachable ------------------------------------------------------


class DownRedis:
    """A cache whose async client fails as an unreachable Redis does."""

    def __init__(self) -> None:
        self.calls = 0

    def aio(self) -> Any:
        self.calls += 1
        raise redis.ConnectionError("connection refused")


class Db:
    """A database that fails while ``down``, and records the rows of each upsert otherwise."""

    def __init__(self) -> None:
        self.down = False
        self.statements: list[Any] = []

    @contextmanager
    def begin(self) -> Any:
        if self.down:
            raise OSError("database unreachable")
        yield self

    def execute(self, stmt: Any) -> None:
        self.statements.append(stmt)


def _principal(key_id: str = "k1", tokens_per_minute: int | None = 100, admin: bool = False) -> Principal:
    scopes = frozenset({"admin"} if admin else {"infer"})
    return Principal(key_id=key_id, name=key_id, scopes=scopes, tokens_per_minute=tokens_per_minute)


def _meter(db: Db | None = None, **kw: Any) -> TokenMeter:
    return TokenMeter(DownRedis(), db or Db(), flush_s=3600, **kw)  # type: ignore[arg-type]


def test_with_redis_down_each_process_limits_its_keys_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    meter = _meter()
    key, other, unlimited = _principal("k1"), _principal("k2"), _principal("k3", None)

    async def run() -> None:
        reservation = await meter.admit(key, "m", 40)
        assert reservation is not None and reservation.local and reservation.tokens == 40
        await meter.record(key, "m", 30, 70, reservation)  # used 100 of 40 reserved: the next request waits
        with pytest.raises(RateLimited) as refused:
            await meter.admit(key, "m", 1)
        err = refused.value
        assert err.status == 429 and err.field == "tokens_per_minute" and err.retry_after and err.retry_after >= 1
        assert "100 tokens per minute" in err.message and "retry in" in err.message
        assert err.headers["X-RateLimit-Limit-Tokens"] == "100" and err.headers["X-RateLimit-Remaining-Tokens"] == "0"
        assert await meter.admit(other, "m", 100) is not None  # another key's window is its own
        await meter.record(unlimited, "m", 10**6, 10**6)
        assert await meter.admit(unlimited, "m", 10**6) is None  # no limit, never refused, nothing reserved
        assert await meter.admit(None, "m", 10**6) is None  # AUTH_REQUIRED off: nothing to limit

    with caplog.at_level(logging.WARNING, logger="shared.access.tokens"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records if "in-process" in r.getMessage()] == [
        "token limits enforced in-process (per process, not shared): redis unavailable: ConnectionError"
    ]


def test_parallel_admissions_reserve_and_settle_in_process_with_redis_down() -> None:
    """The attacker's 10 parallel requests: only as many as their reservations fit are admitted; the settled
    window and the usage tally hold the tokens actually used."""
    meter = _meter()
    key = _principal("k-par", 60)

    async def one() -> tokens.Reservation | RateLimited | None:
        try:
            return await meter.admit(key, "m", 12)
        except RateLimited as exc:
            return exc

    async def run() -> None:
        got = await asyncio.gather(*(one() for _ in range(10)))
        admitted = [r for r in got if isinstance(r, tokens.Reservation)]
        assert len(admitted) == 5 and sum(isinstance(r, RateLimited) for r in got) == 5
        refused = next(r for r in got if isinstance(r, RateLimited))
        assert "12 more asked for" in refused.message and refused.retry_after and refused.retry_after >= 1
        await asyncio.gather(*(meter.record(key, "m", 2, 4, r) for r in admitted))  # 6 used of each 12
        assert (await meter.window("k-par", 60)).used == 30
        again = await asyncio.gather(*(one() for _ in range(3)))
        assert [isinstance(r, tokens.Reservation) for r in again] == [True, True, False]
        for r in again[:2]:
            await meter.release(r)  # failed before answering: given back whole
        assert (await meter.window("k-par", 60)).used == 30
        more = await meter.admit(key, "m", 10)
        await meter.record(key, "m", 5, 20, more)  # used more than reserved: the rest is charged
        assert (await meter.window("k-par", 60)).used == 55

    asyncio.run(run())
    assert meter._pending[("k-par", "m", next(iter(meter._pending))[2])] == [2 * 5 + 5, 4 * 5 + 20, 6]


def test_a_reservation_larger_than_the_limit_is_refused_with_400_naming_max_tokens() -> None:
    meter = _meter()
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(meter.admit(_principal("k1", 60), "m", 515))
    err = refused.value
    assert err.status == 400 and err.field == "max_tokens"
    assert "reserves 515 tokens" in err.message and "lower max_tokens" in err.message
    assert asyncio.run(meter.window("k1", 60)).used == 0  # nothing charged


def test_usage_is_kept_while_postgresql_is_down_and_written_once_it_is_back() -> None:
    db = Db()
    at = datetime(2026, 12, 7, 18, 42, 5, tzinfo=UTC)
    meter = _meter(db, clock=lambda: at)
    rows: list[list[dict[str, Any]]] = []

    def upsert(batch: list[dict[str, Any]]) -> None:
        with db.begin():  # fails while the database is down, as the real upsert does
            rows.append(batch)

    meter._upsert = upsert  # type: ignore[method-assign]

    async def record() -> None:
        await meter.record(_principal("k1"), "tiny_lm", 5, 7)
        await meter.record(_principal("k1"), "tiny_lm", 3, 0)
        await meter.record(None, "tiny_lm", 2, 2)

    db.down = True
    asyncio.run(record())  # never raises
    assert meter.flush() == 0 and rows == []
    asyncio.run(record())
    db.down = False
    assert meter.flush() == 2
    hour = at.replace(minute=0, second=0)
    assert sorted(rows[0], key=lambda r: r["key_id"]) == [
        {"key_id": "anonymous", "model": "tiny_lm", "hour": hour, "prompt_tokens": 4, "completion_tokens": 4,
         "requests": 2},
        {"key_id": "k1", "model": "tiny_lm", "hour": hour, "prompt_tokens": 16, "completion_tokens": 14,
         "requests": 4},
    ]  # fmt: skip
    assert meter.flush() == 0  # nothing twice


def test_the_pending_tally_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "MAX_PENDING", 3)
    meter = _meter()

    async def record() -> None:
        for i in range(5):
            await meter.record(_principal(f"k{i}", None), "m", 1, 1)

    asyncio.run(record())
    assert len(meter._pending) == 3 and meter.dropped == 2


def test_record_never_raises_and_takes_no_negative_or_absurd_counts() -> None:
    meter = _meter()
    asyncio.run(meter.record(_principal("k1", None), "m", -5, "x"))  # type: ignore[arg-type]
    assert list(meter._pending.values()) == [[0, 0, 1]]  # an answered request with nothing countable
    assert tokens._count(10**12) == tokens.MAX_TOKENS_PER_REQUEST and tokens._count(True) == 0


def test_usage_counts_reach_the_prometheus_counter() -> None:
    from shared.telemetry import metrics

    meter = _meter()
    counter = metrics().tokens
    before = counter.labels("unit_lm", "prompt", "k-prom")._value.get()
    asyncio.run(meter.record(_principal("k-prom", None), "unit_lm", 11, 4))
    assert counter.labels("unit_lm", "prompt", "k-prom")._value.get() == before + 11
    assert counter.labels("unit_lm", "completion", "k-prom")._value.get() >= 4
    text = metrics().text()[0].decode()
    assert 'kinfer_tokens_total{key_id="k-prom",kind="prompt",model="unit_lm"}' in text


# -- who reads whose usage ----------------------------------------------------------------------------------


def test_a_key_reads_its_own_usage_and_an_admin_any() -> None:
    mine, admin = _principal("k1"), _principal("a1", admin=True)
    assert tokens._usage_key(None, mine) == "k1"
    assert tokens._usage_key("self", mine) == tokens._usage_key("k1", mine) == "k1"
    with pytest.raises(Forbidden):
        tokens._usage_key("k2", mine)
    assert tokens._usage_key(None, admin) is None  # every key
    assert tokens._usage_key("k2", admin) == "k2" and tokens._usage_key("self", admin) == "a1"
    assert tokens._usage_key("k2", None) == "k2"  # AUTH_REQUIRED off
    for bad in ("x" * 65, "a\x00b"):
        with pytest.raises(InvalidInput):
            tokens._usage_key(bad, admin)


def test_usage_report_checks_its_query_before_reading() -> None:
    meter = _meter()
    for args, field in (
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "since"),
        ({"by": "day"}, "by"),
        ({"limit": "0"}, "limit"),
    ):
        with pytest.raises(InvalidInput) as bad:
            meter.usage_report(args, None)
        assert bad.value.field == field


# -- key limits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 100_000_001, True, "100", 1.5])
def test_a_token_limit_is_a_whole_number_in_range_or_null(value: object) -> None:
    with pytest.raises(InvalidInput) as bad:
        keys_mod._validate_limits(None, value)
    assert bad.value.field == "tokens_per_minute" and "1 to 100,000,000" in bad.value.message


def test_token_limits_in_range_pass() -> None:
    for value in (None, 1, 100_000_000):
        keys_mod._validate_limits(None, value)
