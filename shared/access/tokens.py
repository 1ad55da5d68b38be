"""Token limits and token usage per API key (the OpenAI-compatible routes): ``TokenMeter``.

A key may carry ``tokens_per_minute`` (``shared.access.keys``) beside its requests-per-minute limit. The
routes call ``admit(principal, model, reserve)`` before running the model, which answers a ``Reservation``,
and ``record(principal, model, prompt_tokens, completion_tokens, reservation)`` after it answered (for a
stream: when it ends or the client goes away, with the tokens sent so far); ``release(reservation)`` when
it failed before answering.

**The limit** is a 60 s sliding window counter in Redis, in ``limits``' own layout (two counters per key,
``{KEY_PREFIX}:{LIMITER/<key id>/<limit>/1/minute}`` and ``.../-1``), so ``limits``'
``SlidingWindowCounterRateLimiter.get_window_stats(RateLimitItemPerMinute(limit), key_id)`` reads the same
window. A request is counted by **reservation**, as OpenAI counts ``max_tokens`` at admission: ``admit``
charges ``reserve`` (``reserve_for``: the prompt's estimate plus ``max_tokens``) into the window in one Lua
call, ``limits``' ``acquire_sliding_window``: refused, charging nothing, when the window's weighted count
(``floor(previous * its remaining share of the minute) + current``) plus ``reserve`` would pass the limit:
429 ``rate_limited`` (field ``tokens_per_minute``, ``Retry-After``: when the window has room for this
reserve). Parallel requests are charged one after the other inside Redis, so together they never reserve
more than the limit. A request whose reserve alone exceeds the limit could never be admitted: 400
``invalid_input`` (field ``max_tokens``, "lower max_tokens"), not a 429 a client would retry in vain.
``record`` then settles: it charges ``actual - reserved`` (the same script, unconditionally when positive:
a real tokenizer may count the prompt higher than the estimate; a refund when negative), so the window ends
up holding the tokens actually used. A refund is taken from the counter that holds the reservation,
also after the window rolled (that counter became the previous minute's: it is found by its expiry,
which ``Reservation.expires`` remembers; a counter that expired meanwhile has nothing left to refund),
and never below zero. A reservation never settled (the process died mid-generation) stays charged until
it leaves the window. Changing a key's limit starts a new window (the limit is part of the key, as for
the request limiter).

**The estimate** (``reserve_for``): the prompt counts ``max(whitespace-separated words, ceil(UTF-8 bytes / 4))``
tokens: words are the demo model's own count (``tiny_lm``), and bytes / 4 is the usual rule for the BPE
tokenizers of production models, which also bounds a prompt with few spaces (one 32 KB "word" is 8,192
tokens, not 1). The completion counts ``max_tokens``, or ``DEFAULT_MAX_TOKENS`` (16, the default of
``tiny_lm`` and of vLLM's sampling parameters) when the request gives none.

Redis down (or answering errors): each process keeps its own windows in memory, with the same arithmetic
and the same reservations, so N processes admit at most N times the limit until Redis is back; the outage
is logged once and Redis is tried again after ``DOWN_FOR_S``. A reservation is settled where it was
charged (a refund of one charged in Redis while Redis is down is lost: the window stays fuller, never
emptier). Metering never fails an answered request.

**Usage** is counted per key (``anonymous`` with AUTH_REQUIRED off), model and hour, with the tokens the
model reported (never the reservations): the Prometheus counter
``kinfer_tokens_total{model, kind="prompt"|"completion", key_id}`` of the process (``shared.telemetry``),
and durable hourly totals in PostgreSQL (``token_usage``, migration 0012). Why PostgreSQL rather than Redis
hashes: usage is billing-grade history that must survive a Redis flush or eviction (Redis is a cache here),
is read by time range, key and model (SQL sums, an index on the hour), and is small: one row per key, model
and hour, however many requests. Rows are added to off the hot path: ``record`` adds to an in-process
tally, and one multi-row ``INSERT ... ON CONFLICT DO UPDATE`` per ``FLUSH_S`` (from a thread, armed by the
first tally after a flush; at exit too) moves it to PostgreSQL, so a process that dies loses at most its last
``FLUSH_S``. While PostgreSQL is down the tally is kept (at most ``MAX_PENDING`` rows; beyond that new rows
are dropped and counted in ``dropped``) and written by a later flush. ``GET /v1/usage`` reads the table
(``usage_report``): a key sees its own usage, an admin key any key's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

import redis
import sqlalchemy as sa

from shared import validation as v
from shared.clients.aio import TimedFlush
from shared.clients.schema import token_usage
from shared.domain import ANONYMOUS
from shared.errors import Forbidden, InvalidInput, RateLimited

if TYPE_CHECKING:
    from shared.access.auth import Principal
    from shared.clients.db import Database

log = logging.getLogger(__name__)

KEY_PREFIX = "kinfer:tpm"
WINDOW_S = 60
DOWN_FOR_S = 1.0
FLUSH_S = 2.0
MAX_PENDING = 10_000  # (key, model, hour) rows this process holds while PostgreSQL is unreachable
MAX_KEYS = 100_000  # in-process windows kept while Redis is down
MAX_TOKENS_PER_REQUEST = 10_000_000  # a bound on what one record() may charge (a bug, not a request)
MAX_MODEL_LEN = 128
REDIS_ERRORS = (redis.RedisError, OSError)
USAGE_BY = ("model", "hour")
MAX_USAGE_ROWS = 10_000
DEFAULT_SPAN = timedelta(hours=24)

DEFAULT_MAX_TOKENS = 16  # reserved for a request without max_tokens: tiny_lm's and vLLM's default
BYTES_PER_TOKEN = 4  # the prompt estimate's bound for BPE tokenizers (with its word count)
REFUND_TOLERANCE_S = WINDOW_S / 4  # how far a counter's expiry may be from the reservation's (they differ by 60 s)

# limits' acquire_sliding_window (shift the windows when the current one is over, then add), in three uses:
# - admit (ARGV[3] = limit > 0): charge ARGV[2] only if floor(previous * share) + current + ARGV[2] <= limit;
# - charge (ARGV[3] = 0, ARGV[2] >= 0): charge whatever the window holds (the tokens were spent; 0 only reads);
# - refund (ARGV[2] < 0): take back up to -ARGV[2] from the counter whose TTL is ARGV[4] ms (+-ARGV[5]), the
#   one the reservation went into (the current one then, maybe the previous one now), never below zero.
# Answers the window afterwards: {previous count, previous ttl ms, current count, current ttl ms, admitted}.
_CHARGE = """
local expiry = tonumber(ARGV[1]) * 1000
local amount = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local admitted = 1
if limit > 0 then
    local previous = tonumber(redis.call('get', KEYS[1])) or 0
    local previous_ttl = math.max(0, tonumber(redis.call('pttl', KEYS[1])))
    local current = tonumber(redis.call('get', KEYS[2])) or 0
    if math.floor(previous * previous_ttl / expiry) + current + amount > limit then
        admitted = 0
    end
end
if admitted == 1 and amount > 0 then
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], amount)
    else
        redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
    end
elseif amount < 0 then
    local expected = tonumber(ARGV[4])
    local tolerance = tonumber(ARGV[5])
    for _, key in ipairs({KEYS[2], KEYS[1]}) do
        local ttl = tonumber(redis.call('pttl', key))
        if ttl > 0 and math.abs(ttl - expected) <= tolerance then
            local back = math.min(tonumber(redis.call('get', key)) or 0, -amount)
            if back > 0 then
                redis.call('decrby', key, back)
            end
            break
        end
    end
end
return {
    tonumber(redis.call('get', KEYS[1])) or 0, tonumber(redis.call('pttl', KEYS[1])),
    tonumber(redis.call('get', KEYS[2])) or 0, tonumber(redis.call('pttl', KEYS[2])), admitted
}
"""


def reserve_for(prompt: str, max_tokens: int | None) -> int:
    """What a completion reserves of its key's token limit: the prompt's estimate, the larger of its
    whitespace-separated words (the demo model's count) and its UTF-8 bytes / 4 (BPE tokenizers), plus
    ``max_tokens`` (``DEFAULT_MAX_TOKENS`` when the request gave none)."""
    estimate = max(len(prompt.split()), math.ceil(len(prompt.encode("utf-8", "replace")) / BYTES_PER_TOKEN))
    return estimate + (DEFAULT_MAX_TOKENS if max_tokens is None else max(0, max_tokens))


# -- the window arithmetic (pure: unit-tested) -----------------------------------------------------
@dataclass(frozen=True)
class Window:
    """A sliding window counter as ``limits`` keeps it: the previous minute's count and how long it has left
    to live, the current one's count and TTL (it lives two minutes: it becomes the previous one when its TTL
    falls under a minute). TTLs in seconds, 0 when the counter does not exist."""

    limit: int
    previous: int = 0
    previous_ttl: float = 0.0
    current: int = 0
    current_ttl: float = 0.0

    @property
    def used(self) -> float:
        """The weighted count: the previous minute's share still inside the window, plus the current count."""
        return self.previous * max(0.0, self.previous_ttl) / WINDOW_S + self.current

    @property
    def remaining(self) -> int:
        """Tokens left in the window (as ``limits``' ``get_window_stats`` answers it)."""
        return max(0, self.limit - math.floor(self.used))

    @property
    def spent(self) -> bool:
        return self.used >= self.limit

    def fits(self, amount: int) -> bool:
        """Whether ``amount`` more tokens stay within the limit (``limits``' test: whole tokens counted)."""
        return math.floor(self.used) + amount <= self.limit

    def retry_after(self, amount: int = 1) -> float:
        """Seconds until the window has room for ``amount`` tokens (0 when it has now): until the weighted
        count falls under ``limit - amount + 1`` (``amount`` 1: under the limit)."""
        target = self.limit - max(1, amount) + 1
        if self.used < target:
            return 0.0
        shift = self.current_ttl - WINDOW_S if self.current and self.current_ttl > WINDOW_S else math.inf
        if self.current < target and self.previous:
            # before the shift the previous count decays: previous * (ttl - t) / W + current < target
            wait = self.previous_ttl - (target - self.current) * WINDOW_S / self.previous
            if wait < shift:
                return max(0.0, wait)
        if not math.isfinite(shift):
            return max(0.0, self.previous_ttl)
        # after the shift the current count is the previous one, decaying over a minute
        if self.current < target:
            return max(0.0, shift)
        return max(0.0, shift + WINDOW_S * (1 - target / self.current))


@dataclass(frozen=True)
class Reservation:
    """Tokens ``admit`` charged to a key's window, which ``record`` settles (or ``release`` gives back):
    the window (key, limit), how many, the expiry of the counter they went into (monotonic seconds: that
    counter is found by it after the window rolled) and whether it is this process's window (Redis down)."""

    key_id: str
    limit: int
    tokens: int
    expires: float
    local: bool = False


def redis_keys(prefix: str, identifier: str, limit: int) -> list[str]:
    """[previous window, current window]: ``limits``' names for ``RateLimitItemPerMinute(limit)``
    (``key_for`` and RedisStorage's braces), as ``shared.access.ratelimit`` spells them."""
    key = f"{prefix}:{{LIMITER/{identifier}/{limit}/1/minute}}"
    return [f"{key}/-1", key]


@dataclass
class LocalWindow:
    """``limits``' sliding window counter in memory (the fallback while Redis is down): the same two
    counters with expiry times (monotonic seconds), shifted, charged and refunded as the Lua script does."""

    previous: int = 0
    previous_until: float = 0.0
    current: int = 0
    current_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def charge(self, limit: int, amount: int, now: float) -> Window:
        """Add ``amount`` whatever the window holds (0: only read)."""
        with self.lock:
            self._shift(now)
            if amount > 0:
                self._add(amount, now)
            return self._state(limit, now)

    def admit(self, limit: int, amount: int, now: float) -> tuple[Window, float | None]:
        """Add ``amount`` if the window has room for it: (the window, the expiry of the counter charged), or
        (the window, None) when it has not (nothing charged)."""
        with self.lock:
            self._shift(now)
            if not self._state(limit, now).fits(amount):
                return self._state(limit, now), None
            self._add(amount, now)
            return self._state(limit, now), self.current_until

    def refund(self, limit: int, amount: int, until: float, now: float) -> Window:
        """Take back up to ``amount`` from the counter that expires at ``until`` (the current one or, after a
        shift, the previous one), never below zero; nothing once that counter is gone."""
        with self.lock:
            self._shift(now)
            if until > now and self.current_until == until:
                self.current -= min(self.current, amount)
            elif until > now and self.previous_until == until:
                self.previous -= min(self.previous, amount)
            return self._state(limit, now)

    def _shift(self, now: float) -> None:
        if self.previous_until <= now:
            self.previous = 0
        if self.current_until <= now:
            self.current = 0
        if self.current_until > now and self.current_until - now < WINDOW_S:
            self.previous, self.previous_until = self.current, self.current_until
            self.current, self.current_until = 0, self.current_until + WINDOW_S

    def _add(self, amount: int, now: float) -> None:
        if self.current_until <= now:
            self.current_until = now + 2 * WINDOW_S
        self.current += amount

    def _state(self, limit: int, now: float) -> Window:
        return Window(
            limit,
            self.previous,
            max(0.0, self.previous_until - now) if self.previous else 0.0,
            self.current,
            max(0.0, self.current_until - now) if self.current else 0.0,
        )


# -- the usage report (GET /v1/usage) ----------------------------------------------------------------
class UsageRow(TypedDict, total=False):
    """Tokens of one key and model (``by=model``), or of one key, model and hour (``by=hour``, with ``hour``)."""

    key_id: str
    model: str
    hour: datetime
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    requests: int


class UsageTotals(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    requests: int


class UsageReport(TypedDict):
    """``GET /v1/usage``: rows (at most ``limit``; ``truncated`` when there were more) and the totals of
    every row in range, over the hours that overlap [since, until)."""

    since: datetime
    until: datetime
    by: str
    key_id: str | None
    model: str | None
    usage: list[UsageRow]
    totals: UsageTotals
    limit: int
    truncated: bool


USAGE_QUERY = ("key_id", "model", "since", "until", "by", "limit")


# -- the meter --------------------------------------------------------------------------------------
class TokenMeter(TimedFlush):
    """Per-key token limits (Redis, in-process while it is down) and usage tallies (PostgreSQL, batched)."""

    def __init__(
        self,
        cache: Any,
        db: Database,
        flush_s: float = FLUSH_S,
        key_prefix: str = KEY_PREFIX,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.cache = cache
        self.db = db
        self.flush_s = flush_s
        self.key_prefix = key_prefix
        self._clock = clock or (lambda: datetime.now(UTC))
        self._script: Any = None
        self._local: dict[str, LocalWindow] = {}
        self._down_until = 0.0
        self._redis_outage = False
        self._db_outage = False
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: dict[tuple[str, str, datetime], list[int]] = {}
        self._next_flush = time.monotonic() + flush_s
        self._armed = False
        self.dropped = 0  # usage rows dropped: PostgreSQL down and MAX_PENDING rows waiting

    # -- the hot path -----------------------------------------------------------------------------------
    async def admit(self, principal: Principal | None, model: str, reserve: int) -> Reservation | None:
        """Reserve ``reserve`` tokens (``reserve_for``: the prompt's estimate + ``max_tokens``, at least 1) of
        the key's token limit, or refuse: 429 ``rate_limited`` (field ``tokens_per_minute``, ``Retry-After``)
        when the window has no room for them, 400 (field ``max_tokens``) when they alone exceed the limit.
        None (nothing to settle) for keys without a limit, or without a principal (AUTH_REQUIRED off)."""
        limit = principal.tokens_per_minute if principal is not None else None
        if principal is None or not limit:
            return None
        amount = max(1, _count(reserve))
        if amount > limit:
            raise InvalidInput(
                f"this request reserves {amount:,} tokens (its prompt and max_tokens), more than this API key's "
                f"token limit of {limit:,} tokens per minute, so it could never be admitted: lower max_tokens "
                "or shorten the prompt",
                field="max_tokens",
            )
        window, reservation = await self._reserve(principal.key_id, limit, amount)
        if reservation is None:
            wait = window.retry_after(amount)
            raise RateLimited(
                f"token limit of {limit:,} tokens per minute reached for this API key ({math.floor(window.used):,} "
                f"used or reserved in the last minute, {amount:,} more asked for: the prompt and max_tokens); "
                f"retry in {max(1, math.ceil(wait))} s",
                field="tokens_per_minute",
                retry_after=max(1.0, wait),
                headers=_headers(window, wait),
            )
        return reservation

    async def record(
        self,
        principal: Principal | None,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        reservation: Reservation | None = None,
    ) -> None:
        """Count one answered request's tokens: the Prometheus counter, the hourly tally, and the key's window
        when it has a token limit: ``reservation`` (from ``admit``) settled to the real count, or without one
        the real count charged. Never raises (a Redis or PostgreSQL outage is logged once)."""
        try:
            prompt = _count(prompt_tokens)
            completion = _count(completion_tokens)
            key_id = principal.key_id if principal is not None else ANONYMOUS
            name = str(model)[:MAX_MODEL_LEN]
            from shared.telemetry import metrics

            metrics().tokens_used(key_id, name, prompt, completion)
            self._tally(key_id, name, prompt, completion)
            limit = principal.tokens_per_minute if principal is not None else None
            if reservation is not None:
                await self._settle(reservation, prompt + completion)
            elif limit and prompt + completion:
                await self._charge(key_id, limit, prompt + completion)
        except Exception:  # metering must never fail an answered request
            log.exception("token metering failed for one request")

    async def release(self, reservation: Reservation | None) -> None:
        """Give a reservation back whole: its request failed before the model answered (no usage counted).
        Never raises."""
        if reservation is None:
            return
        try:
            await self._settle(reservation, 0)
        except Exception:
            log.exception("token metering failed to release a reservation")

    async def window(self, key_id: str, limit: int) -> Window:
        """The key's current window (inspection, tests)."""
        return await self._charge(key_id, limit, 0)

    async def _settle(self, reservation: Reservation, actual: int) -> None:
        """Charge ``actual - reserved``: more when the request used more, a refund when it used less."""
        difference = actual - reservation.tokens
        if difference > 0:
            await self._charge(reservation.key_id, reservation.limit, difference)
        elif difference < 0:
            await self._refund(reservation, -difference)

    async def _charge(self, key_id: str, limit: int, amount: int) -> Window:
        """Add ``amount`` tokens to the window whatever it holds (0: only read it)."""
        if time.monotonic() < self._down_until:
            return self._local_window(key_id, limit).charge(limit, amount, time.monotonic())
        try:
            window, _ = await self._script_call(key_id, limit, amount, admit=False)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return self._local_window(key_id, limit).charge(limit, amount, time.monotonic())
        return window

    async def _reserve(self, key_id: str, limit: int, amount: int) -> tuple[Window, Reservation | None]:
        """Charge ``amount`` if the window has room for it (atomically: one script call)."""
        if time.monotonic() < self._down_until:
            return self._local_reserve(key_id, limit, amount)
        try:
            window, admitted = await self._script_call(key_id, limit, amount, admit=True)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return self._local_reserve(key_id, limit, amount)
        if not admitted:
            return window, None
        return window, Reservation(key_id, limit, amount, time.monotonic() + window.current_ttl)

    def _local_reserve(self, key_id: str, limit: int, amount: int) -> tuple[Window, Reservation | None]:
        window, until = self._local_window(key_id, limit).admit(limit, amount, time.monotonic())
        if until is None:
            return window, None
        return window, Reservation(key_id, limit, amount, until, local=True)

    async def _refund(self, reservation: Reservation, amount: int) -> None:
        """Take ``amount`` back from the counter the reservation went into, where it went (Redis or here)."""
        key_id, limit = reservation.key_id, reservation.limit
        now = time.monotonic()
        if reservation.local:
            self._local_window(key_id, limit).refund(limit, amount, reservation.expires, now)
            return
        left = reservation.expires - now
        if left <= 0 or now < self._down_until:  # its counter has expired, or Redis is down: nothing to refund
            return
        try:
            await self._script_call(key_id, limit, -amount, admit=False, expected_ttl=left)
        except REDIS_ERRORS as exc:
            self._failed(exc)

    async def _script_call(
        self, key_id: str, limit: int, amount: int, admit: bool, expected_ttl: float = 0.0
    ) -> tuple[Window, bool]:
        client = self.cache.aio()
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(_CHARGE)
        args = [WINDOW_S, amount, limit if admit else 0, round(expected_ttl * 1000), round(REFUND_TOLERANCE_S * 1000)]
        prev, prev_ttl, cur, cur_ttl, admitted = await self._script(
            keys=redis_keys(self.key_prefix, key_id, limit), args=args
        )
        if self._redis_outage:
            self._redis_outage = False
            log.info("token limits through redis again")
        window = Window(
            limit, int(prev or 0), max(0, int(prev_ttl or 0)) / 1000, int(cur or 0), max(0, int(cur_ttl or 0)) / 1000
        )
        return window, bool(admitted)

    def _local_window(self, key_id: str, limit: int) -> LocalWindow:
        name = f"{key_id}/{limit}"
        window = self._local.get(name)
        if window is None:
            if len(self._local) >= MAX_KEYS:
                self._local.clear()
            window = self._local.setdefault(name, LocalWindow())
        return window

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._down_until = time.monotonic() + DOWN_FOR_S
            first, self._redis_outage = not self._redis_outage, True
        if first:
            log.warning(
                "token limits enforced in-process (per process, not shared): redis unavailable: %s",
                type(exc).__name__,
            )

    # -- usage tallies ----------------------------------------------------------------------------------
    def _tally(self, key_id: str, model: str, prompt: int, completion: int) -> None:
        hour = self._clock().replace(minute=0, second=0, microsecond=0)
        row = (key_id, model, hour)
        with self._lock:
            counts = self._pending.get(row)
            if counts is None:
                if len(self._pending) >= MAX_PENDING:
                    self.dropped += 1
                    return
                counts = self._pending[row] = [0, 0, 0]
            counts[0] += prompt
            counts[1] += completion
            counts[2] += 1
        if time.monotonic() >= self._next_flush:
            self._flush_soon()
        elif not self._armed:
            self._arm()

    def _flush_soon(self) -> None:
        self._next_flush = time.monotonic() + self.flush_s
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
        else:  # the event loop never waits for PostgreSQL
            loop.run_in_executor(None, self.flush)

    def flush(self) -> int:
        """Add the pending tallies to ``token_usage`` in one statement; kept for a later flush when PostgreSQL
        fails. Answers the number of rows written."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending:
                return 0
            rows = [
                {
                    "key_id": key_id,
                    "model": model,
                    "hour": hour,
                    "prompt_tokens": counts[0],
                    "completion_tokens": counts[1],
                    "requests": counts[2],
                }
                for (key_id, model, hour), counts in pending.items()
            ]
            try:
                self._upsert(rows)
            except Exception as exc:  # PostgreSQL down (or refusing): keep the tallies for the next flush
                self._restore(pending)
                if not self._db_outage:
                    self._db_outage = True
                    log.warning("token usage kept in-process (%d rows): %s", len(pending), type(exc).__name__)
                if not self._armed:
                    self._arm()
                return 0
            if self._db_outage:
                self._db_outage = False
                log.info("token usage written to postgresql again")
            return len(rows)

    def _upsert(self, rows: list[dict[str, Any]]) -> None:
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(token_usage).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[token_usage.c.key_id, token_usage.c.model, token_usage.c.hour],
            set_={
                "prompt_tokens": token_usage.c.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": token_usage.c.completion_tokens + stmt.excluded.completion_tokens,
                "requests": token_usage.c.requests + stmt.excluded.requests,
            },
        )
        with self.db.begin() as conn:
            conn.execute(stmt)

    def _restore(self, pending: Mapping[tuple[str, str, datetime], list[int]]) -> None:
        with self._lock:
            for row, counts in pending.items():
                mine = self._pending.get(row)
                if mine is None:
                    if len(self._pending) >= MAX_PENDING:
                        self.dropped += 1
                        continue
                    self._pending[row] = counts
                else:
                    for i in range(3):
                        mine[i] += counts[i]

    def close(self) -> None:
        """Write what is pending (at exit)."""
        self.flush()

    # -- GET /v1/usage --------------------------------------------------------------------------------
    def usage_report(self, args: Mapping[str, str], principal: Principal | None) -> UsageReport:
        """Token usage over [since, until) (default: the last 24 hours), per key and model (``by=model``) or
        per key, model and hour (``by=hour``). A key sees its own usage only (``key_id`` absent, ``self`` or its
        own id); an admin key, or anyone with AUTH_REQUIRED off, any key's or (no ``key_id``) every key's."""
        key_id = _usage_key(args.get("key_id"), principal)
        model = v.text(args["model"][:MAX_MODEL_LEN], "model") if args.get("model") else None
        by = v.choice(args["by"], "by", USAGE_BY) if args.get("by") else "model"
        limit = v.integer(args.get("limit"), "limit", default=1000, lo=1, hi=MAX_USAGE_ROWS)
        now = self._clock()
        until = _time(args["until"], "until") if args.get("until") else now
        since = _time(args["since"], "since") if args.get("since") else until - DEFAULT_SPAN
        if since >= until:
            raise InvalidInput("since must be before until", field="since")
        self.flush()  # this process's own tallies first
        first_hour = since.replace(minute=0, second=0, microsecond=0)
        where: list[sa.ColumnElement[bool]] = [token_usage.c.hour >= first_hour, token_usage.c.hour < until]
        if key_id is not None:
            where.append(token_usage.c.key_id == key_id)
        if model is not None:
            where.append(token_usage.c.model == model)
        sums = (
            sa.func.coalesce(sa.func.sum(token_usage.c.prompt_tokens), 0).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(token_usage.c.completion_tokens), 0).label("completion_tokens"),
            sa.func.coalesce(sa.func.sum(token_usage.c.requests), 0).label("requests"),
        )
        group = [token_usage.c.key_id, token_usage.c.model] + ([token_usage.c.hour] if by == "hour" else [])
        order = ([token_usage.c.hour] if by == "hour" else []) + [token_usage.c.key_id, token_usage.c.model]
        query = sa.select(*group, *sums).where(*where).group_by(*group).order_by(*order).limit(limit + 1)
        with self.db.read() as conn:
            found = conn.execute(query).all()
            total = conn.execute(sa.select(*sums).where(*where)).one()
        rows: list[UsageRow] = []
        for row in found[:limit]:
            amounts = _amounts(row.prompt_tokens, row.completion_tokens, row.requests)
            item: UsageRow = {
                "key_id": row.key_id,
                "model": row.model,
                "prompt_tokens": amounts["prompt_tokens"],
                "completion_tokens": amounts["completion_tokens"],
                "total_tokens": amounts["total_tokens"],
                "requests": amounts["requests"],
            }
            if by == "hour":
                item["hour"] = row.hour
            rows.append(item)
        return {
            "since": since,
            "until": until,
            "by": by,
            "key_id": key_id,
            "model": model,
            "usage": rows,
            "totals": _amounts(total.prompt_tokens, total.completion_tokens, total.requests),
            "limit": limit,
            "truncated": len(found) > limit,
        }


def _amounts(prompt: object, completion: object, requests: object) -> UsageTotals:
    p, c = int(str(prompt)), int(str(completion))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c, "requests": int(str(requests))}


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            return 0
    return min(max(0, value), MAX_TOKENS_PER_REQUEST)


def _headers(window: Window, wait: float) -> dict[str, str]:
    """OpenAI's token rate-limit headers (``x-ratelimit-*-tokens``) on a refusal."""
    return {
        "X-RateLimit-Limit-Tokens": str(window.limit),
        "X-RateLimit-Remaining-Tokens": str(window.remaining),
        "X-RateLimit-Reset-Tokens": f"{max(1, math.ceil(wait))}s",
    }


def _usage_key(raw: str | None, principal: Principal | None) -> str | None:
    """The key whose usage is asked for (None: every key), after the access rule of ``usage_report``."""
    wanted = raw.strip() if raw else None
    if wanted is not None and (not wanted or len(wanted) > 64):
        raise InvalidInput("key_id must be an API key id, `self` or `anonymous`", field="key_id")
    if wanted is not None:
        v.text(wanted, "key_id")
    if principal is None:
        if wanted == "self":
            raise InvalidInput(
                "`self` names the caller's key, and authentication is off: give a key id", field="key_id"
            )
        return wanted
    if wanted == "self":
        return principal.key_id
    if principal.allows("admin"):
        return wanted
    if wanted is None or wanted == principal.key_id:
        return principal.key_id
    raise Forbidden(
        "a key may read its own usage only (key_id absent, `self` or its own id); admin keys read any key's"
    )


def _time(raw: str, field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInput(f"{field} must be an ISO 8601 time such as 2026-12-01T00:00:00Z", field=field) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
