"""Past server.max_connections the oldest idle connections make room, as nginx reuses its
"reusable" ones (a connection waiting for its first request, or kept alive between two).

Counting idle connections against the limit let one client hold every slot: 10,700 sockets
that sent nothing, reopened as the keep-alive time closed them, and every other client got
the 503 (a security review's scratch run). A connection with no request in progress costs the
client nothing to lose: it reconnects, as it would after the keep-alive time. Only
connections with a request running, or its head arriving, count against the limit for good.

The idle ones are kept in a dict, oldest first (insertion order), on the protocol class that
``gateway.h1.capped`` makes per server: H1 adds a connection as it becomes idle and takes it
out at its request's first byte, both C calls with no Python frame on a request's path. One
is closed only once idle for RECLAIM_MIN_IDLE_S and with no bytes waiting in its socket: a
burst of connections accepted in one loop turn looked idle, their requests read a turn
later, and closing them dropped 297 of 300 requests unanswered where each had its 503 (the
diff review's find); a connection whose request has come but not been read is not idle.
A connection sending a head slowly is busy, as nginx's is: head_timeout_s bounds it. A
connection is idle from its last request's end (or its start), not from its last read: bytes
that begin no request (CRLFs) do not keep it young.
"""

from __future__ import annotations

import termios
import time
from typing import Any, Protocol

from gateway.defaults import RECLAIM_LOG_EVERY_S, RECLAIM_MIN_IDLE_S
from gateway.h1.flow import socket_queue
from gateway.runtime import log


class Idle(Protocol):
    """What reclaiming reads of a connection (gateway.h1.conn.H1), and its close (idle, it
    closes now)."""

    idle_since: float  # on the event loop's clock
    in_head: bool
    lingering: bool
    running: Any  # its Cycle, or None
    transport: Any

    def shutdown(self) -> None: ...


def _unread(conn: Idle) -> bool:
    """Bytes wait in the connection's socket (a request the loop has not read yet)."""
    return socket_queue(conn.transport, termios.FIONREAD) > 0


def _idle(conn: Idle) -> bool:
    """Nothing in progress: no head arriving, no answer going out, no linger."""
    running = conn.running
    return not (conn.in_head or conn.lingering) and (running is None or running.response_complete)


class Reclaimer:
    """One server's idle connections and the warning that says they were closed."""

    __slots__ = ("_closed", "_logged_at", "closing", "conns")

    def __init__(self) -> None:
        self.conns: dict[Idle, None] = {}
        # Closed here, not yet lost (connection_lost comes a loop turn later): still among the
        # server's connections, but no longer over the limit, or a burst of accepts in one
        # turn would close one more idle connection for each closed before it.
        self.closing: set[Idle] = set()
        self._closed = 0  # since the last warning
        self._logged_at = -RECLAIM_LOG_EVERY_S

    def arrived(self, conn: Idle, connections: int, limit: int | None) -> None:
        """A new connection: idle until its first byte; past ``limit`` open ``connections``
        older idle ones close, so that one client's sockets cannot fill the descriptors."""
        self.conns[conn] = None
        if limit is not None and connections - len(self.closing) > limit:
            self.make_room(connections - len(self.closing) - limit, conn)

    def gone(self, conn: Idle) -> None:
        self.conns.pop(conn, None)
        self.closing.discard(conn)

    def full(self, connections: int, running: int, limit: int) -> bool:
        """Whether a request must be refused: ``running`` requests at ``limit``, or more than
        ``limit`` ``connections`` open once idle ones made room."""
        over = connections - len(self.closing) - limit
        if over > 0:
            over -= self.make_room(over)
        return over > 0 or running >= limit

    def make_room(self, over: int, spare: Idle | None = None) -> int:
        """Closes up to ``over`` idle connections, oldest first, idle for RECLAIM_MIN_IDLE_S
        at least and with nothing unread, never ``spare`` (the one asking); returns how many
        it closed. (idle_since is the event loop's clock: CLOCK_MONOTONIC, as time's.)"""
        now = time.monotonic()
        stale: list[Idle] = []
        chosen: list[Idle] = []
        for conn in self.conns:
            if len(chosen) >= over:
                break
            if conn is spare:
                continue
            if not _idle(conn):  # not idle after all: out of the list, not closed
                stale.append(conn)
                continue
            if now - conn.idle_since < RECLAIM_MIN_IDLE_S:
                break  # the rest are younger still (oldest first)
            if not _unread(conn):  # else its request is here: busy once read
                chosen.append(conn)
        for conn in stale:
            del self.conns[conn]
        for conn in chosen:
            del self.conns[conn]
            conn.shutdown()  # H1.shutdown: an idle one closes now
            self.closing.add(conn)
        closed = len(chosen)
        if closed:
            self._tell(closed)
        return closed

    def _tell(self, closed: int) -> None:
        # Once in a while, not per connection: a flood of them would flood the log too.
        self._closed += closed
        now = time.monotonic()
        if now - self._logged_at >= RECLAIM_LOG_EVERY_S:
            log.warning(
                "connection limit reached (server.max_connections): closed %d idle "
                "connection(s) to make room",
                self._closed,
            )
            self._closed, self._logged_at = 0, now
