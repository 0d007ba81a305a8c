"""Reclaimer alone: which idle connections close for room, and when a request is refused."""

from __future__ import annotations

import logging
import time

import pytest

from gateway.h1.reclaim import Reclaimer


class Running:
    def __init__(self, complete: bool) -> None:
        self.response_complete = complete


class Conn:
    """An idle connection as H1 has it, idle for ``age`` seconds."""

    def __init__(self, name: str, age: float = 5.0) -> None:
        self.name = name
        self.closed = False
        self.idle_since = time.monotonic() - age
        self.in_head = self.lingering = False
        self.running: Running | None = None
        self.transport = None  # no socket to ask for unread bytes

    def shutdown(self) -> None:
        self.closed = True


def test_the_oldest_idle_close_first_and_never_the_one_asking() -> None:
    r = Reclaimer()
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    r.arrived(a, 1, 2)
    r.arrived(b, 2, 2)
    assert not (a.closed or b.closed)  # within the limit
    r.conns.pop(a)  # a's request began: busy
    r.arrived(c, 3, 2)  # one over: b, the oldest idle one, closes; c is the one asking
    assert b.closed and not a.closed and not c.closed
    assert r.closing == {b}
    # b not yet lost: still among the server's 3, but already counted out.
    d = Conn("d")
    r.arrived(d, 4, 2)
    assert c.closed and not d.closed  # one more over, not two
    r.gone(b)
    r.gone(c)
    assert r.closing == set() and list(r.conns) == [d]


def test_a_request_is_refused_only_when_no_idle_one_makes_room() -> None:
    r = Reclaimer()
    idle = Conn("idle")
    r.conns[idle] = None
    assert not r.full(connections=3, running=1, limit=2)  # the idle one closed for it
    assert idle.closed
    assert r.full(connections=4, running=1, limit=2)  # 4 - 1 closing: still one over, none idle
    assert r.full(connections=1, running=2, limit=2)  # requests at the limit: no room to make


def test_the_warning_comes_at_most_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    r = Reclaimer()
    with caplog.at_level(logging.WARNING, logger="geogate"):
        for i in range(5):
            r.conns[Conn(str(i))] = None
            r.make_room(1)
    lines = [m for m in caplog.messages if "to make room" in m]
    assert lines == [
        "connection limit reached (server.max_connections): closed 1 idle connection(s) "
        "to make room"
    ]


def test_only_a_connection_idle_a_while_with_nothing_in_progress_is_closed() -> None:
    r = Reclaimer()
    young = Conn("young", age=0.0)  # accepted this loop turn: its request may be unread yet
    r.conns[young] = None
    assert r.make_room(1) == 0 and not young.closed and young in r.conns
    busy, lingering, heading = Conn("busy"), Conn("lingering"), Conn("heading")
    busy.running = Running(complete=False)  # a pipelined request started after the last one
    lingering.lingering = True  # answered early, its body still coming (LINGER_S to go)
    heading.in_head = True
    r = Reclaimer()
    for c in (busy, lingering, heading):
        r.conns[c] = None
    assert r.make_room(3) == 0
    assert not any(c.closed for c in (busy, lingering, heading))
    assert r.conns == {}  # not idle: out of the list
