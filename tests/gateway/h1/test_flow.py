"""gateway.h1.flow: reading paused and resumed (not while a pipelined request waits), writing
paused and drained."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from gateway.h1.flow import Flow


class Transport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


class Conn(Flow):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = Transport()  # type: ignore[assignment]
        self.loop = loop
        self.read_paused = self.write_paused = False
        self._write_paused_at = 0.0
        self._drained = None
        self.on_writable = None
        self._queued: deque[Any] = deque()


async def test_reading_waits_for_the_queue_and_writing_drains() -> None:
    c = Conn(asyncio.get_running_loop())
    c.pause_reading()
    c.pause_reading()  # once
    c._queued.append("a pipelined request")
    c.resume_reading()  # not while it waits: its body would pile up unread
    c._queued.clear()
    c.resume_reading()
    assert c.transport.calls == ["pause", "resume"]  # type: ignore[attr-defined]
    c.pause_writing()
    woke: list[bool] = []
    c.on_writable = lambda: woke.append(True)
    waiter = asyncio.ensure_future(c.drain())
    await asyncio.sleep(0)
    assert not waiter.done() and c.write_paused
    c.resume_writing()
    await asyncio.wait_for(waiter, 1)
    assert woke == [True] and not c.write_paused
