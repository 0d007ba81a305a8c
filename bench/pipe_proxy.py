"""The least any proxy on Python's event loop can do: a byte pipe, for bench/overhead.py's
``--peers floor-pipe``.

Each client connection gets its own upstream connection, and bytes go across both ways as they
come, unparsed: no HTTP at all (HTTP/1.1 keep-alive on both sides keeps the two in step, and
this bench's clients and backend speak nothing else). Reading one side pauses while the other
side's transport is over its write buffer's high-water mark. Per request it costs what uvloop's
loop and the kernel cost per wake-up and socket call, and nothing of the gateway's: whatever
geogate or any floor proxy costs above it is Python doing HTTP; what it costs above nginx is
the event loop's own price, which no Python proxy can get under.

``--parse`` also runs the upstream's bytes through httptools (floor-pipe-parse); ``--task``
parses both ways and runs a task per request that awaits the answer's head and end
(floor-pipe-task): the asyncio machinery an ASGI server and client add, without their code.

Run: ``python bench/pipe_proxy.py --port N --upstream PORT`` (uvloop, one process, 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

import httptools
import uvloop

HOST = "127.0.0.1"
BACKLOG = 2048


class Side(asyncio.Protocol):
    """One end of the pipe: what it reads goes to ``peer``'s transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.early: list[bytes] = []  # read before the peer's connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
        else:
            peer.transport.write(data)

    def pause_writing(self) -> None:  # our socket is full: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class ParsedSide(Side):
    """An upstream end that also runs each read through httptools' response parser (the bytes
    still go across as they came): what parsing alone costs a relayed chunk. With --task, its
    answers' heads and ends resolve the futures the client side's request tasks wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpResponseParser(self)
        self.body = 0  # on_body's work: httptools calls it per chunk, as a proxy's parser would
        self.waiting: deque[tuple[asyncio.Future[None], asyncio.Future[None]]] = deque()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        super().data_received(data)

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_headers_complete(self) -> None:
        if self.waiting and not self.waiting[0][0].done():  # a 1xx head comes before the final
            self.waiting[0][0].set_result(None)

    def on_message_complete(self) -> None:
        if self.waiting:
            self.waiting.popleft()[1].set_result(None)


class ClientSide(Side):
    """The client's end. With ``task``, it also parses each request (httptools) and runs an
    asyncio task per request that waits for the answer's head and then its end, as a server's
    request task waits on its upstream client: the task and future machinery's own price,
    with the bytes still piped by the callbacks."""

    def __init__(self, upstream: int, parse: bool, task: bool) -> None:
        super().__init__()
        self.upstream = upstream
        self.parse = parse or task
        self.parser = httptools.HttpRequestParser(self) if task else None
        self.requests = 0  # complete requests read before the upstream side was up
        self.tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)
        super().data_received(data)

    def on_message_complete(self) -> None:
        if isinstance(self.peer, ParsedSide):
            self._start(self.peer)
        else:
            self.requests += 1

    def _start(self, up: ParsedSide) -> None:
        loop = asyncio.get_running_loop()
        futures = (loop.create_future(), loop.create_future())
        up.waiting.append(futures)
        task = loop.create_task(self._request(*futures))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _request(head: asyncio.Future[None], end: asyncio.Future[None]) -> None:
        await head
        await end

    def connection_lost(self, exc: Exception | None) -> None:
        for task in list(self.tasks):
            task.cancel()  # answers that will not come: nothing waits for them
        super().connection_lost(exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._connect())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            kind: type[Side] = ParsedSide if self.parse else Side
            _, up = await loop.create_connection(kind, HOST, self.upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            if up.transport is not None:
                up.transport.close()  # the client left while this connected
            return
        up.peer, self.peer = self, up
        if isinstance(up, ParsedSide):
            for _ in range(self.requests):
                self._start(up)
        if up.transport is not None:
            for data in self.early:
                up.transport.write(data)
        self.early = []


async def serve(port: int, upstream: int, parse: bool, task: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ClientSide(upstream, parse, task), HOST, port, backlog=BACKLOG
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description="a byte pipe on uvloop (floor-pipe)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--parse", action="store_true", help="the upstream's bytes through httptools")
    ap.add_argument("--task", action="store_true", help="parse both ways, a task per request")
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.parse, args.task))


if __name__ == "__main__":
    main()
