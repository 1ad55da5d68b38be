"""At server start the objects built so far leave the collector's reach (``gc.freeze``), so full collections
under load walk only what requests create, not the process's modules and clients."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest

from shared.web.server import with_thread_pool


def test_the_lifespan_start_collects_then_freezes_and_requests_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    me = threading.get_ident()  # servers that other tests left running in threads may start meanwhile
    collect, freeze = gc.collect, gc.freeze

    def record(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            if threading.get_ident() == me:
                calls.append(name)
            return real(*args)

        return call

    monkeypatch.setattr(gc, "collect", record("collect", collect))
    monkeypatch.setattr(gc, "freeze", record("freeze", freeze))
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    try:
        asyncio.run(with_thread_pool(app, 4)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
        assert calls == ["collect", "freeze"] and seen == ["lifespan"]  # the app still gets its lifespan
        assert gc.get_freeze_count() > 1000  # this test process's modules at least
        asyncio.run(with_thread_pool(app, 4)({"type": "http"}, None, None))  # type: ignore[arg-type]
        assert calls == ["collect", "freeze"] and seen == ["lifespan", "http"]  # a request freezes nothing
    finally:
        gc.unfreeze()
