"""At server start the objects built so far leave the collector's reach (``gc.freeze``), so full collections
under load walk only what requests create, not the process's modules and clients."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from shared.web.server import with_thread_pool


def test_the_lifespan_start_freezes_what_startup_built() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        asyncio.run(with_thread_pool(app, 4)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
        assert seen == ["lifespan"]  # the app still gets its lifespan
        assert gc.get_freeze_count() > 1000  # this test process's modules at least
        frozen = gc.get_freeze_count()
        asyncio.run(with_thread_pool(app, 4)({"type": "http"}, None, None))  # type: ignore[arg-type]
        assert gc.get_freeze_count() == frozen  # requests freeze nothing
    finally:
        gc.unfreeze()
