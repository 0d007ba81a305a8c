"""A started chunked response's body written by its owner (gateway.http.relay, gateway._splice)
straight to the client's transport: gateway.http.asgi.ClientPipe on a gateway.h1 connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Flow(Protocol):
    """What a Pipe uses of its connection (gateway.h1.cycle.Connection has it all)."""

    transport: asyncio.Transport
    read_paused: bool
    write_paused: bool  # read by the pipe's owner (gateway.http.asgi.PipeFlow)
    on_writable: Callable[[], None] | None

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close_now(self) -> None: ...


class Ends(Protocol):
    """What a Pipe tells its response (gateway.h1.cycle.Cycle)."""

    last_written: bool


class Pipe:
    """gateway.http.asgi.ClientPipe on this protocol: the transport's own write and is_closing
    (the cycle's head is out: Cycle.pipe), and the connection as its flow flag."""

    __slots__ = ("_cycle", "_paused_here", "buffered", "flow", "is_closing", "write")

    def __init__(self, conn: Flow, cycle: Ends) -> None:
        self.flow = conn
        self._cycle = cycle
        self._paused_here = False  # lend() paused the connection's reading
        transport = conn.transport
        self.write = transport.write
        # uvloop raises on a write to a closed transport; the request's task learns of the
        # loss a loop turn later (the disconnect hook), while upstream reads may still come.
        # The connection's loss closes the transport before connection_lost runs.
        self.is_closing = transport.is_closing
        self.buffered = transport.get_write_buffer_size

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        self.flow.on_writable = callback

    def lend(self) -> int | None:
        conn = self.flow
        transport = conn.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            return None
        if transport.get_extra_info("sslcontext") is not None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        self._paused_here = not conn.read_paused
        conn.pause_reading()
        return int(sock.fileno())

    def give_back(self) -> None:
        if self._paused_here:
            self._paused_here = False
            self.flow.resume_reading()

    def abort(self) -> None:
        self.flow.close_now()

    def body_ended(self) -> None:
        self._cycle.last_written = True
