"""Hosting: serve ASGI entry points under uvicorn (uvloop, httptools), as Knative runs them.

This module hosts whatever entry points it is handed and never names its callers:
which function serves which path is decided by the composition root
(``shared.cli.serve``). A Kinfer entry point is ``async (starlette Request) ->
Response`` (functions-framework's async mode); ``asgi_adapter`` calls it directly,
without Starlette's router and middleware, because the entry point already does
routing, errors and headers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypedDict

from starlette.types import ASGIApp, Receive, Scope, Send

Entry = Callable[[Any], Awaitable[Any]]  # starlette Request -> Response


def framework_app(target: str, source: str) -> Any:
    """functions-framework's own ASGI app for a function file that is not a Kinfer function."""
    from functions_framework.aio import create_asgi_app

    return create_asgi_app(target, source)  # type: ignore[no-untyped-call]


def asgi_adapter(entry: Entry) -> ASGIApp:
    """An ASGI app calling ``entry(Request) -> Response`` for each HTTP request."""
    from starlette.requests import Request

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = await _guarded(entry, Request(scope, receive))
            await answer(response, scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    return app


def prefix_router(mounted: Sequence[tuple[str, Entry]]) -> ASGIApp:
    """One ASGI app handing each request to the first entry whose path prefix matches (404 JSON otherwise)."""
    from starlette.requests import Request

    from shared.errors import NotFound
    from shared.web.request import request_id_of
    from shared.web.responses import error_response

    prefixes = [(prefix.rstrip("/"), entry) for prefix, entry in mounted]

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = scope["path"]
        for prefix, entry in prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                response = await _guarded(entry, request)
                break
        else:
            request_id = request_id_of(request.headers)
            response = error_response(NotFound(f"no route for {request.method} {path}"), request_id, "")
            response.headers["X-Request-ID"] = request_id
        await answer(response, scope, receive, send)

    return route


class _HeadWithBody:
    """A transport that holds the first write (uvicorn's status line and headers) and sends it with the
    second (the body) in one ``write``; anything else goes to the real transport."""

    __slots__ = ("transport", "head")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.head = data
        else:
            self.transport.write(self.head + data if self.head else data)
            self.head = b""

    def flush(self) -> None:
        if self.head:
            self.transport.write(self.head)
        self.head = b""

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def answer(response: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """Send ``response``. A whole answer (not a stream, no background task) leaves in one socket write:
    uvicorn writes the status line and headers, then the body, each with its own ``send(2)``, so every
    answer cost two system calls and reached the client as two packets."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    whole = isinstance(getattr(response, "body", None), bytes) and getattr(response, "background", None) is None
    if transport is None or not whole or scope.get("method") == "HEAD":
        await response(scope, receive, send)
        return
    joined = _HeadWithBody(transport)
    cycle.transport = joined  # type: ignore[union-attr]
    try:
        await response(scope, receive, send)
    finally:
        cycle.transport = transport  # type: ignore[union-attr]
        joined.flush()


async def _guarded(entry: Entry, request: Any) -> Any:
    """``entry(request)``; an exception that escapes it (it answers every error itself, so this is a bug)
    is logged and answered with the generic JSON 500, never uvicorn's plain-text one."""
    try:
        return await entry(request)
    except Exception:
        from shared.errors import KinferError
        from shared.web.request import request_id_of
        from shared.web.responses import error_response

        logging.getLogger(__name__).exception("unhandled error outside dispatch")
        request_id = request_id_of(request.headers)
        response = error_response(
            KinferError("internal error; the request id identifies it in the logs"), request_id, ""
        )
        response.headers["X-Request-ID"] = request_id
        return response


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# uvicorn as Knative runs it: uvloop and httptools (through ``shared.web.protocol``, which bounds request
# heads and answers protocol errors in JSON), keep-alive past Knative's idle timeout, no access log, no
# X-Forwarded-* rewriting (nothing here uses the client address).
HTTP_PROTOCOL = "shared.web.protocol:KinferHttpProtocol"


class ServerOptions(TypedDict):
    """The keyword arguments of ``uvicorn.run`` that Kinfer sets."""

    loop: Literal["uvloop"]
    http: str
    lifespan: Literal["on"]
    access_log: bool
    log_level: str
    timeout_keep_alive: int
    server_header: bool
    proxy_headers: bool


SERVER_OPTIONS: ServerOptions = {
    "loop": "uvloop",
    "http": HTTP_PROTOCOL,
    "lifespan": "on",
    "access_log": False,
    "log_level": "warning",
    "timeout_keep_alive": 75,
    "server_header": False,
    "proxy_headers": False,
}


def with_thread_pool(app: ASGIApp, threads: int) -> ASGIApp:
    """``app`` whose blocking handlers run at most ``threads`` at once (anyio's default thread pool,
    sized when the server starts: the limiter belongs to the event loop).

    At that start the objects built so far (the modules and what the app built before serving; the infer
    function holds about 120,000 objects under load) are moved out of the garbage collector's reach
    (``gc.freeze``): they live as long as the process, and
    without it every full collection walked them all (one every 17-20k requests with capture on: about 0.1 s
    each on a loaded 2-core machine, 0.02 s frozen; a pause for every request in flight)."""

    async def sized(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            import gc

            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
            gc.collect()
            gc.freeze()
        await app(scope, receive, send)

    return sized


def die_with_parent() -> None:
    """Make this process (a uvicorn worker) get SIGKILL when its parent (the uvicorn master) dies, so a
    ``kill -9`` of the master takes the whole server down instead of leaving workers serving as orphans.
    Linux only (prctl PR_SET_PDEATHSIG); elsewhere a no-op."""
    import ctypes
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the master died before the prctl: go now
        os._exit(1)


def serve(app: Any, host: str, port: int, workers: int = 1, threads: int = 8) -> None:
    """Run uvicorn: ``workers`` processes, each running at most ``threads`` blocking handlers at once.

    ``app`` is an ASGI app, or (needed for ``workers`` > 1) the import string of a zero-argument
    factory that builds it in each worker process and sizes its own thread pool.
    """
    import uvicorn

    target = app if isinstance(app, str) else with_thread_pool(app, threads)
    uvicorn.run(target, host=host, port=port, workers=workers, factory=isinstance(app, str), **SERVER_OPTIONS)
