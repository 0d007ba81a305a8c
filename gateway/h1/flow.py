"""Flow control of a gateway.h1 connection, apart from its parsing: reading paused while a
pipelined request waits its turn or a body's taker is full, writing paused while the
client's socket buffer is (asyncio calls pause_writing and resume_writing), ``drain`` for
whoever writes, the keep-alive timer that closes an idle or stalled connection, and a close
from this side that tells the running request at once. A mixin: gateway.h1.conn.H1 holds the
state."""

from __future__ import annotations

import asyncio
import fcntl
import sys
import termios
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.h1.cycle import Cycle


class Flow:
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    read_paused: bool
    write_paused: bool
    _write_paused_at: float
    _pending_mark: int  # what the client had not taken at the pause, or at the last look
    _drained: asyncio.Future[None] | None
    on_writable: Callable[[], None] | None  # a Pipe's, while the buffer is full
    _queued: deque[Any]  # pipelined requests waiting their turn
    keepalive_s: float
    _idle_timer: asyncio.TimerHandle | None
    idle_since: float
    _closing_seen: bool
    in_head: bool
    running: Cycle | None
    lost: bool
    _on_lost: Callable[[], None] | None  # the running request's hook

    def close_now(self) -> None:
        """Close from this side, and tell the running request at once: with a full send buffer
        uvloop reports connection_lost only once it drains, which a client that stopped reading
        never lets happen (the request would wait for its idle timeout)."""
        self.transport.close()
        self._tell_lost()

    def _tell_lost(self) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def _disconnect_hook(self, callback: Callable[[], None] | None) -> None:
        if callback is not None and self.lost:
            callback()
            return
        self._on_lost = callback

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
        # No look yet (no system call here, on the write path): the idle timer's next check
        # comes within a keep-alive time of now, before any can find a stall, and takes it.
        self._pending_mark = -1

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

    def _idle_check(self) -> None:
        """One timer per connection: it fires keep-alive seconds after it was armed and closes
        the connection if no request has run since; otherwise it waits out the rest."""
        self._idle_timer = None
        now = self.loop.time()
        stalled = self.write_paused and now - self._write_paused_at >= self.keepalive_s
        if stalled and self._client_read():  # slow, not stalled: a keep-alive time from now
            self._write_paused_at, stalled = now, False
        elif self.write_paused and not stalled:
            # What the client's kernel took just after the pause (its receive buffer filling)
            # is no reading: a client that reads nothing was given a keep-alive time more.
            self._pending_mark = self._pending()
        closing = self.transport.is_closing()
        if (closing and self._closing_seen) or stalled:
            # A close waits for the send buffer to drain, and a client that reads nothing
            # never lets it: after a keep-alive time of that, the connection is dropped, and
            # a response waiting to write learns it is gone.
            self.transport.abort()
            return
        busy = self.in_head or (self.running is not None and not self.running.response_complete)
        left = self.keepalive_s - (now - self.idle_since)
        if closing or (not busy and left <= 0):
            # Closed here, idle, or by an answer (Connection: close, whose last bytes may still
            # be draining): a full keep-alive time from now, not what was left of this timer's.
            if not closing:
                self.transport.close()
            self._closing_seen = True
            self._idle_timer = self.loop.call_later(self.keepalive_s, self._idle_check)
            return
        wait = self.keepalive_s if busy else left
        self._idle_timer = self.loop.call_later(wait, self._idle_check)

    def _client_read(self) -> bool:
        """The client took bytes since the last look after the pause. Writing stays paused for
        long while a slow client reads: the kernel says writable only once a third of the send
        buffer is free, and an autotuned one of 4 MiB read at 38 KB/s is 35 s of that."""
        pending = self._pending()
        read = 0 <= pending < self._pending_mark
        self._pending_mark = pending
        return read

    def _pending(self) -> int:
        """Bytes not yet taken by the client: the transport's, and the kernel's unsent or
        unacknowledged ones (SIOCOUTQ, Linux's TIOCOUTQ); -1 where the socket cannot say."""
        out = socket_queue(self.transport, termios.TIOCOUTQ)
        return -1 if out < 0 else self.transport.get_write_buffer_size() + out


def socket_queue(transport: Any, request: int) -> int:
    """A TCP socket's queue as ``ioctl(request)`` gives it (TIOCOUTQ: bytes the client has
    not taken; FIONREAD: bytes not yet read); -1 where the socket cannot say (a test's
    transport, a socket that is not TCP's)."""
    try:
        sock = transport.get_extra_info("socket")
        out = fcntl.ioctl(sock.fileno(), request, bytes(4))
    except (AttributeError, OSError):
        return -1
    return int.from_bytes(out, sys.byteorder)
