"""The per-backend tallies reach Redis after a quiet spell too: the first tally after a flush arms
a timer, so the last requests before traffic stops are not left in the process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.backends.metrics import Recorder


class _Pipeline:
    def __init__(self, sink: dict[str, float]) -> None:
        self.sink, self.ops = sink, []

    def hincrby(self, key: str, field: str, value: float) -> None:
        self.ops.append((f"{key}/{field}", value))

    hincrbyfloat = hincrby

    def execute(self) -> None:
        for name, value in self.ops:
            self.sink[name] = self.sink.get(name, 0) + value


class _Cache:
    def __init__(self) -> None:
        self.sink: dict[str, float] = {}
        self.client: Any = self

    def available(self) -> bool:
        return True

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        return _Pipeline(self.sink)


def _wait_for(check: Any, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(check())


def test_the_last_requests_before_a_quiet_spell_are_flushed() -> None:
    cache = _Cache()
    recorder = Recorder(cache, flush_s=0.05, requests_key="r", latency_key="l", rows_key="w")
    for _ in range(3):
        recorder.record("t:8001", "success", 0.002)
    recorder.record_rows("t:8001", 4)
    assert _wait_for(lambda: cache.sink.get("r/t:8001|success") == 3), cache.sink
    assert cache.sink["w/t:8001|sum"] == 4


def test_on_an_event_loop_the_timer_flushes_off_the_loop() -> None:
    cache = _Cache()
    recorder = Recorder(cache, flush_s=0.05, requests_key="r", latency_key="l", rows_key="w")

    async def serve() -> None:
        recorder.record("t:8001", "failure", 0.01)
        await asyncio.sleep(0.3)

    asyncio.run(serve())
    assert _wait_for(lambda: cache.sink.get("r/t:8001|failure") == 1), cache.sink
