"""Flow control of a gateway.h1 connection, apart from its parsing: reading paused while a
pipelined request waits its turn or a body's taker is full, writing paused while the
client's socket buffer is (asyncio calls pause_writing and resume_writing), and ``drain``
for whoever writes. A mixin: gateway.h1.conn.H1 holds the state."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any


class Flow:
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    read_paused: bool
    write_paused: bool
    _write_paused_at: float
    _drained: asyncio.Future[None] | None
    on_writable: Callable[[], None] | None  # a Pipe's, while the buffer is full
    _queued: deque[Any]  # pipelined requests waiting their turn

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        # Not while a pipelined request waits its turn: its body would pile up unread.
        if self.read_paused and not self._queued:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_at = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.on_writable is not None:
            self.on_writable()

    async def drain(self) -> None:
        if self._drained is None:
            self._drained = self.loop.create_future()
        await asyncio.shield(self._drained)
