"""The least any proxy on Python's event loop can do: a byte pipe, for bench/overhead.py's
``--peers floor-pipe``.

Each client connection gets its own upstream connection, and bytes go across both ways as they
come, unparsed: no HTTP at all (HTTP/1.1 keep-alive on both sides keeps the two in step, and
this bench's clients and backend speak nothing else). Reading one side pauses while the other
side's transport is over its write buffer's high-water mark. Per request it costs what uvloop's
loop and the kernel cost per wake-up and socket call, and nothing of the gateway's: whatever
geogate or any floor proxy costs above it is Python doing HTTP; what it costs above nginx is
the event loop's own price, which no Python proxy can get under.

Run: ``python bench/pipe_proxy.py --port N --upstream PORT`` (uvloop, one process, 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio

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
    still go across as they came): what parsing alone costs a relayed chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.parser = httptools.HttpResponseParser(self)
        self.body = 0

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        super().data_received(data)

    def on_body(self, body: bytes) -> None:
        self.body += len(body)


class ClientSide(Side):
    def __init__(self, upstream: int, parse: bool) -> None:
        super().__init__()
        self.upstream = upstream
        self.parse = parse

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

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
        if up.transport is not None:
            for data in self.early:
                up.transport.write(data)
        self.early = []


async def serve(port: int, upstream: int, parse: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ClientSide(upstream, parse), HOST, port, backlog=BACKLOG
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description="a byte pipe on uvloop (floor-pipe)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--parse", action="store_true", help="the upstream's bytes through httptools")
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.upstream, args.parse))


if __name__ == "__main__":
    main()
