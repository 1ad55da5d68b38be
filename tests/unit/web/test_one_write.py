"""A whole answer leaves in one transport write (status line, headers and body together); streams, HEAD
answers and connection-closing answers keep their order."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response, StreamingResponse

from shared.web.server import answer


class Transport:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def close(self) -> None:
        self.events.append(("close", b""))

    def is_closing(self) -> bool:
        return False


class Cycle:
    """uvicorn's RequestResponseCycle.send, reduced to its writes: the head on start, the body on each body
    message, a close after the last one when the connection is not kept alive."""

    def __init__(self, keep_alive: bool = True) -> None:
        self.transport: Any = Transport()
        self.real = self.transport
        self.keep_alive = keep_alive

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.transport.write(b"HTTP/1.1 %d OK\r\n\r\n" % message["status"])
        elif message.get("body") or not message.get("more_body", False):
            self.transport.write(message.get("body", b""))
            if not message.get("more_body", False) and not self.keep_alive:
                self.transport.close()


async def _receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _send(response: Any, method: str = "POST", keep_alive: bool = True) -> Cycle:
    cycle = Cycle(keep_alive)
    asyncio.run(answer(response, {"type": "http", "method": method}, _receive, cycle.send))
    assert cycle.transport is cycle.real, "the real transport is put back"
    return cycle


def test_a_whole_answer_is_one_write() -> None:
    cycle = _send(Response(b'{"ok":true}', 200))
    assert [kind for kind, _ in cycle.real.events] == ["write"]
    assert cycle.real.events[0][1].startswith(b"HTTP/1.1 200 OK") and cycle.real.events[0][1].endswith(b'{"ok":true}')


def test_a_closing_connection_gets_the_answer_before_the_close() -> None:
    cycle = _send(Response(b"bye", 200), keep_alive=False)
    assert [kind for kind, _ in cycle.real.events] == ["write", "close"]
    assert cycle.real.events[0][1].endswith(b"bye")


def test_a_head_answer_and_a_stream_are_written_as_they_come() -> None:
    head = _send(Response(b"", 200), method="HEAD")
    assert head.real.events[0][1].startswith(b"HTTP/1.1 200")

    async def chunks() -> Any:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    stream = _send(StreamingResponse(chunks(), media_type="text/event-stream"))
    writes = [data for kind, data in stream.real.events if kind == "write" and data]
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[1:3] == [b"data: 1\n\n", b"data: 2\n\n"]
