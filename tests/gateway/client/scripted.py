"""A real TCP server on 127.0.0.1 that answers each request with scripted bytes, and records
what it was sent: the client's tests see exactly what went over the wire."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")
# Given the request head and body and the writer, answer (write, sleep, close as the test needs).
Answer = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Scripted:
    answer: Answer
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.Server | None = None
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context
    url: str = ""  # http(s)://127.0.0.1:PORT once started

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for t in self.tasks:  # each closes its connection as it ends
            t.cancel()  # an answer still sleeping (a stalled upstream) ends with the test
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.heads.append(head)
                self.bodies.append(body)
                await self.answer(head, body, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test ended (a handler's end is not the test's)
        finally:
            writer.close()


def raw(data: bytes, close: bool = False) -> Answer:
    """Answer every request with ``data`` as it is (then close the connection if ``close``)."""

    async def answer(_: bytes, __: bytes, w: asyncio.StreamWriter) -> None:
        w.write(data)
        await w.drain()
        if close:
            w.close()

    return answer


def ok(body: bytes = b"hello", extra: bytes = b"") -> Answer:
    return raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """On uvloop, the gateway's event loop (its transports differ from asyncio's own)."""
    return uvloop.run(coro)
