"""A minimal h2c (prior knowledge) client for bench/paced_load.py: many concurrent POSTs on one
connection, each response body fed to a probe as its DATA frames arrive.

Frames by hand rather than the h2 package: h2 cost the load generator about 1 ms of CPU per
16-token stream, which at c=128 left the load CPU (shared with the backend) over 80 % busy, so
the rig, not the proxy, set the TTFT. Here the request's header block is HPACK-encoded once
(never-indexed literals: no dynamic-table state, so the same bytes serve every request),
response header blocks go through a per-connection hpack Decoder (it must see every block to
keep its table in step) only to read :status, and receive flow control is switched off in
effect: the stream and connection windows start at 2^31-1, far more than a run receives.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types (RFC 9113 §6) and the flags this client reads or sets.
DATA, HEADERS, RST_STREAM, SETTINGS = 0x0, 0x1, 0x3, 0x4
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", sid)
        + payload
    )


class Stream:
    def __init__(self, feed: Callable[[bytes, float], None]) -> None:
        self.feed = feed
        self.status = ""
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def finish(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


class H2cConnection(asyncio.Protocol):
    """send() returns "" when the stream ended after a 200, else why it did not."""

    def __init__(self, url: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        block = hpack.Encoder().encode(
            [
                (b":method", b"POST", True),
                (b":scheme", b"http", True),
                (b":authority", parts.netloc.encode(), True),
                (b":path", (parts.path or "/").encode(), True),
                (b"content-type", b"application/json", True),
                (b"content-length", str(len(body)).encode(), True),
            ]
        )
        self.block, self.body = block, body
        self.decoder = hpack.Decoder()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.streams: dict[int, Stream] = {}
        self.next_sid = 1
        self.send_window = DEFAULT_WINDOW  # ours to the server, connection level
        self.window_open = asyncio.Event()
        self.window_open.set()
        self.pending_headers: tuple[int, int, bytes] | None = None  # sid, flags, block so far
        self.closed = ""
        self.connected = asyncio.Event()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connected.set()
        settings = struct.pack(
            ">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW
        )
        grow = struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
        self.transport.write(
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, grow)
        )

    async def send(self, feed: Callable[[bytes, float], None]) -> str:
        while self.send_window < len(self.body) and not self.closed:
            self.window_open.clear()
            await self.window_open.wait()
        if self.transport is None:  # a replacement, still connecting
            await self.connected.wait()
        if self.closed or self.transport is None:
            return self.closed or "not connected"
        sid, self.next_sid = self.next_sid, self.next_sid + 2
        stream = self.streams[sid] = Stream(feed)
        self.send_window -= len(self.body)
        self.transport.write(
            frame(HEADERS, END_HEADERS, sid, self.block) + frame(DATA, END_STREAM, sid, self.body)
        )
        return await stream.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf + data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & MAX_WINDOW
            self._frame(kind, flags, sid, buf[pos + 9 : pos + 9 + length], now)
            pos += 9 + length
        self.buf = buf[pos:]

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, now: float) -> None:
        if kind in (DATA, HEADERS) and flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if kind == DATA:
            if stream := self.streams.get(sid):
                stream.feed(payload, now)
                if flags & END_STREAM:
                    self._end(sid, "" if stream.status == "200" else f"HTTP {stream.status}")
        elif kind in (HEADERS, CONTINUATION):
            self._headers(kind, flags, sid, payload)
        elif kind == RST_STREAM:
            self._end(sid, f"stream reset ({int.from_bytes(payload[:4], 'big')})")
        elif kind == SETTINGS and not flags & ACK:
            assert self.transport is not None
            self.transport.write(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            assert self.transport is not None
            self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE and sid == 0:
            self.send_window += int.from_bytes(payload[:4], "big") & MAX_WINDOW
            self.window_open.set()
        elif kind == GOAWAY:
            self._close(f"GOAWAY ({int.from_bytes(payload[4:8], 'big')})")

    def _headers(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == HEADERS:
            if flags & PRIORITY:
                payload = payload[5:]
            self.pending_headers = (sid, flags, payload)
        elif self.pending_headers is not None:
            sid0, flags0, block = self.pending_headers
            self.pending_headers = (sid0, flags0 | (flags & END_HEADERS), block + payload)
        if self.pending_headers is None or not self.pending_headers[1] & END_HEADERS:
            return
        sid, flags, block = self.pending_headers
        self.pending_headers = None
        headers = dict(self.decoder.decode(block, raw=True))
        stream = self.streams.get(sid)
        if stream is None:
            return
        if not stream.status:  # the response's headers; later ones are trailers
            stream.status = headers.get(b":status", b"?").decode()
        if flags & END_STREAM:
            self._end(sid, "" if stream.status == "200" else f"HTTP {stream.status}")

    def _end(self, sid: int, outcome: str) -> None:
        if stream := self.streams.pop(sid, None):
            stream.finish(outcome)

    def _close(self, why: str) -> None:
        self.closed = self.closed or why
        for sid in list(self.streams):
            self._end(sid, why)
        self.window_open.set()
        self.connected.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(f"connection lost ({type(exc).__name__})" if exc else "connection closed")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
