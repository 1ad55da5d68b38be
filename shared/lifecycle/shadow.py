"""Shadow versions: a share of an alias's answered requests mirrored to other versions, never returned.

An alias may carry ``shadow: {"<version>": <percent>}`` (``Aliases.set_shadow``). After the data plane has
the primary answer, ``ShadowMirror.offer`` starts the shadow call as a background task that first yields
to the event loop, so the answer is on its way before the shadow version is asked. Invariants a reader must
not break: a shadow call never delays, changes or fails the primary answer (every failure is caught and
counted), and at most ``SHADOW_MAX_PENDING`` shadow calls are in flight per process; past that a mirror is
dropped and counted, never queued without bound.

Per (model, alias, primary version, shadow version) the outcome (``agree``: same prediction/label,
``disagree``, ``error``, ``dropped``) and the shadow's latency are tallied in process and flushed to Redis
about once a second (the backends' ``Recorder``), with the largest absolute difference of numeric outputs
and the primary's latency on mirrored requests beside them. ``ShadowStats`` reads the cluster-wide summary
(``GET .../aliases/{alias}/shadow``) and ``ShadowCollector`` exposes it on the backends' ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from shared.backends.metrics import BUCKETS, Recorder, _histogram, read_counters
from shared.clients.aio import spawn

if TYPE_CHECKING:
    from shared.clients.cache import Cache
    from shared.lifecycle.aliases import Alias

log = logging.getLogger(__name__)

REQUESTS_KEY = "kinfer:shadow:requests"  # "model|alias|primary|shadow|outcome" -> count
LATENCY_KEY = "kinfer:shadow:latency"  # "model|alias|primary|shadow|<bucket>" -> count, "...|sum" -> s
EXTRA_KEY = "kinfer:shadow:extra"  # "model|alias|primary|shadow|max_diff" -> max, "...|primary_s" -> sum
OUTCOMES = ("agree", "disagree", "error", "dropped")
MAX_SHADOWS = 3

ShadowAnswer = tuple[object, Mapping[str, object]]
"""A version's (prediction, outputs): the outputs as arrays (``compare`` reads them as float64 where it can)."""


class ShadowPair(TypedDict):
    """One (primary, shadow) pair of an alias: what its mirrored requests showed."""

    primary: str
    shadow: str
    mirrored: int
    agree: int
    disagree: int
    errors: int
    dropped: int
    agreement: float | None
    max_abs_difference: float | None
    shadow_latency_ms: float | None
    primary_latency_ms: float | None


class ShadowSummary(TypedDict):
    """``GET /v1/models/by-name/{name}/aliases/{alias}/shadow``."""

    name: str
    alias: str
    shadow: dict[str, int]
    pairs: list[ShadowPair]


def compare(primary: ShadowAnswer, shadow: ShadowAnswer) -> tuple[bool, float | None]:
    """(same prediction, largest absolute difference of the numeric outputs both have; None: none comparable)."""
    worst: float | None = None
    for name, value in primary[1].items():
        if name not in shadow[1]:
            continue
        try:
            a = np.asarray(value, dtype=np.float64)
            b = np.asarray(shadow[1][name], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if a.shape == (1, *b.shape):  # one version batched, the other not: the same row
            a = a[0]
        elif b.shape == (1, *a.shape):
            b = b[0]
        if a.shape != b.shape or a.size == 0:
            continue
        diff = float(np.max(np.abs(a - b)))
        worst = diff if worst is None else max(worst, diff)
    return primary[0] == shadow[0], worst


class ShadowMirror:
    """Mirrors answered requests to shadow versions in the background, bounded; records what they showed."""

    def __init__(self, cache: Cache, max_pending: int, timeout_s: float, flush_s: float = 1.0) -> None:
        self.cache = cache
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self.flush_s = flush_s
        self.recorder = Recorder(cache, flush_s, REQUESTS_KEY, LATENCY_KEY, "kinfer:shadow:unused")
        self.pending = 0
        self._lock = threading.Lock()
        self._max: dict[str, float] = {}
        self._primary_s: dict[str, float] = {}
        self._armed = False

    def wanted(self, percent: int) -> bool:
        """Whether this request is mirrored to a shadow version taking ``percent`` of them."""
        return percent >= 100 or random.randrange(100) < percent

    def offer(
        self,
        pair: tuple[str, str, str, str],
        run: Callable[[], Awaitable[ShadowAnswer]],
        primary: ShadowAnswer,
        primary_s: float,
    ) -> bool:
        """Mirror one request (``pair``: model, alias, primary version, shadow version); False when dropped."""
        key = "|".join(pair)
        if self.pending >= self.max_pending:
            self.recorder.record(key, "dropped", 0.0)
            return False
        self.pending += 1
        spawn(self._mirror(key, run, primary, primary_s), "shadow request")
        return True

    async def _mirror(
        self, key: str, run: Callable[[], Awaitable[ShadowAnswer]], primary: ShadowAnswer, primary_s: float
    ) -> None:
        try:
            await asyncio.sleep(0)  # the primary answer goes out first
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout_s):  # in this task: wait_for would start another
                    answer = await run()
            except Exception as exc:  # any failure of the shadow is its own, never the caller's
                log.debug("shadow %s failed: %s", key, type(exc).__name__)
                self.recorder.record(key, "error", time.perf_counter() - started)
                return
            seconds = time.perf_counter() - started
            try:
                same, diff = compare(primary, answer)
            except Exception as exc:  # e.g. outputs numpy cannot hold as float64: counted, never raised
                log.debug("shadow %s not compared: %s", key, type(exc).__name__)
                self.recorder.record(key, "error", seconds)
                return
            self.recorder.record(key, "agree" if same else "disagree", seconds)
            self._note(key, diff, primary_s)
        finally:
            self.pending -= 1

    def _note(self, key: str, diff: float | None, primary_s: float) -> None:
        with self._lock:
            if diff is not None:
                self._max[key] = max(diff, self._max.get(key, 0.0))
            self._primary_s[key] = self._primary_s.get(key, 0.0) + primary_s
        if not self._armed:  # flushed once the interval ends, whether or not another mirror comes
            self._armed = True
            loop = asyncio.get_running_loop()
            loop.call_later(self.flush_s, loop.run_in_executor, None, self._timed_flush)

    def _timed_flush(self) -> None:
        self._armed = False
        self.flush_extra()

    def flush_extra(self) -> None:
        """Move the largest differences and the primary latencies to Redis (kept for later if it is down)."""
        with self._lock:
            maxima, sums = dict(self._max), dict(self._primary_s)
            self._max.clear()
            self._primary_s.clear()
        if not (maxima or sums):
            return
        try:
            pipe = self.cache.client.pipeline(transaction=False)
            for key, value in maxima.items():
                pipe.eval(_HMAX, 1, EXTRA_KEY, f"{key}|max_diff", repr(value))
            for key, value in sums.items():
                pipe.hincrbyfloat(EXTRA_KEY, f"{key}|primary_s", value)
            pipe.execute()
        except Exception as exc:  # redis errors: keep them for the next flush
            log.debug("could not flush shadow figures: %s", type(exc).__name__)
            with self._lock:
                for key, value in maxima.items():
                    self._max[key] = max(value, self._max.get(key, 0.0))
                for key, value in sums.items():
                    self._primary_s[key] = self._primary_s.get(key, 0.0) + value

    def close(self) -> None:
        self.recorder.close()
        self.flush_extra()


_HMAX = """
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


def _read(client: Any) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
    requests, latency, _ = read_counters(client, REQUESTS_KEY, LATENCY_KEY, "kinfer:shadow:unused")
    extra = {k.decode(): float(v) for k, v in client.hgetall(EXTRA_KEY).items()}
    return requests, latency, extra


def summarize(
    name: str, alias: str, requests: dict[str, int], latency: dict[str, float], extra: dict[str, float]
) -> list[ShadowPair]:
    """The pairs of ``name``/``alias`` from the raw tallies (fields "model|alias|primary|shadow|part")."""
    prefix = f"{name}|{alias}|"
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for field, count in requests.items():
        if field.startswith(prefix):
            parts = field[len(prefix) :].split("|")
            if len(parts) == 3:
                counts.setdefault((parts[0], parts[1]), {})[parts[2]] = count
    pairs: list[ShadowPair] = []
    for (primary, shadow), c in sorted(counts.items()):
        key = f"{prefix}{primary}|{shadow}"
        agree, disagree, errors = c.get("agree", 0), c.get("disagree", 0), c.get("error", 0)
        done = agree + disagree
        answered = done + errors
        pairs.append(
            {
                "primary": primary,
                "shadow": shadow,
                "mirrored": answered,
                "agree": agree,
                "disagree": disagree,
                "errors": errors,
                "dropped": c.get("dropped", 0),
                "agreement": round(agree / done, 4) if done else None,
                "max_abs_difference": extra.get(f"{key}|max_diff"),
                "shadow_latency_ms": round(latency.get(f"{key}|sum", 0.0) / answered * 1000, 3) if answered else None,
                "primary_latency_ms": round(extra.get(f"{key}|primary_s", 0.0) / done * 1000, 3) if done else None,
            }
        )
    return pairs


class ShadowStats:
    """The cluster-wide shadow summary of an alias, read from Redis."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def pairs(self, name: str, alias: str) -> list[ShadowPair]:
        if not self.cache.available():
            return []
        return summarize(name, alias, *_read(self.cache.client))


class ShadowCollector:
    """prometheus-client collector of the shadow tallies (backends ``/metrics``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        requests, latency, extra = _read(self.client)
        labels = ["model", "alias", "primary", "shadow"]
        counter = CounterMetricFamily(
            "kinfer_shadow_requests",
            "Requests mirrored to a shadow version by outcome: agree, disagree, error, dropped",
            labels=[*labels, "outcome"],
        )
        for field, count in sorted(requests.items()):
            parts = field.split("|")
            if len(parts) == 5:
                counter.add_metric(parts, count)
        yield counter
        diff = GaugeMetricFamily(
            "kinfer_shadow_max_abs_difference",
            "Largest absolute difference of numeric outputs, shadow vs primary",
            labels=labels,
        )
        for field, value in sorted(extra.items()):
            parts = field.split("|")
            if len(parts) == 5 and parts[4] == "max_diff":
                diff.add_metric(parts[:4], value)
        yield diff
        yield _histogram(
            "kinfer_shadow_request_duration_seconds",
            "Latency of mirrored requests on the shadow version",
            latency,
            BUCKETS,
            tuple(labels),
        )


def shadow_summary(alias: Alias, stats: ShadowStats) -> ShadowSummary:
    """``GET .../aliases/{alias}/shadow``: the alias's shadow versions and its pairs' figures."""
    return {
        "name": alias["name"],
        "alias": alias["alias"],
        "shadow": alias["shadow"],
        "pairs": stats.pairs(alias["name"], alias["alias"]),
    }
