"""gateway.h1.flow: reading paused and resumed (not while a pipelined request waits), writing
paused and drained."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

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


class SocketTransport(Transport):
    """A transport over a real TCP socket whose send buffer the test fills."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        self.calls.append("abort")


@contextlib.contextmanager
def paused_on_a_stuck_socket() -> Iterator[tuple[Conn, socket.socket]]:
    """A connection whose writing just paused, over a loopback TCP connection whose sender's
    buffers are full (the receiver reads nothing yet); and that receiver."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sender.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.send(b"x" * 65536)
        c = Conn(asyncio.get_running_loop())
        c.transport = SocketTransport(sender)  # type: ignore[assignment]
        c.keepalive_s, c._idle_timer, c._closing_seen = 5.0, None, False
        c.in_head, c.running, c.idle_since = False, None, c.loop.time()
        c.pause_writing()
        yield c, receiver
        if c._idle_timer is not None:
            c._idle_timer.cancel()
    finally:
        sender.close()
        receiver.close()


def look(c: Conn) -> None:
    """The idle timer's check before a keep-alive time of pause: no cut, the timer re-armed
    (cancelled here, the test's own checks follow)."""
    c._idle_check()
    assert "abort" not in c.transport.calls  # type: ignore[attr-defined]
    timer = c._idle_timer
    assert timer is not None
    timer.cancel()


@pytest.mark.parametrize("reads", [False, True])
async def test_a_client_still_reading_is_slow_not_stalled(reads: bool) -> None:
    # A slowly reading client kept writing paused past keepalive_s (the kernel says writable
    # only once a third of its send buffer is free) and was cut as stalled, logged as a 499.
    with paused_on_a_stuck_socket() as (c, receiver):
        look(c)  # the look the timer takes within a keep-alive time of the pause
        mark = c._pending_mark
        assert mark > 0
        if reads:
            receiver.recv(65536)
            for _ in range(200):  # the window update, the send, the ACK: on the loop's time
                if c._pending() < mark:
                    break
                await asyncio.sleep(0.01)
        c._write_paused_at -= c.keepalive_s  # a keep-alive time paused
        c._idle_check()
        cut = "abort" in c.transport.calls  # type: ignore[attr-defined]
        assert cut is not reads


async def test_what_the_clients_kernel_took_after_the_pause_is_no_reading() -> None:
    # Its receive buffer fills just after the pause: counted as reading, that gave a client
    # that reads nothing a keep-alive time more (150 s for 75 at the default).
    with paused_on_a_stuck_socket() as (c, _):
        c._pending_mark = c._pending() + 4096  # as if 4 KiB more was unsent then, taken since
        look(c)  # a check before the keep-alive time: the mark is taken again
        c._write_paused_at -= c.keepalive_s
        c._idle_check()  # nothing taken since that look: cut
        assert "abort" in c.transport.calls  # type: ignore[attr-defined]


async def test_a_stall_found_before_any_look_is_cut() -> None:
    # The timer's check comes within a keep-alive time of a pause; should one come later
    # (a late timer), there is no mark to read progress from: cut, as a stall always was.
    with paused_on_a_stuck_socket() as (c, _):
        c._write_paused_at -= c.keepalive_s
        c._idle_check()
        assert "abort" in c.transport.calls  # type: ignore[attr-defined]
