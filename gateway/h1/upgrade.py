"""A request that offers a protocol switch (Upgrade: h2c, websocket): declined by answering
in HTTP/1.1, as RFC 9110 §7.8 allows, with its body read. llhttp stops at such a request's head
and hands the rest of the connection over; gateway.h1.conn reads the body here, by its
Content-Length, and a new parser takes what follows. The JDK's HTTP client offers h2c on every
plain-http request, bodies included."""

from __future__ import annotations

from typing import Any

from gateway.h1.refuse import HeadTooLarge

# The connection (gateway.h1.conn.H1) is typed Any here: importing it would be a cycle.
H1 = Any


def declared_length(conn: H1) -> int:
    """An upgrade offer's Content-Length (0 without one). A chunked one is not read: it
    is answered 400 before the app sees it (llhttp stops at its head)."""
    length = 0
    for name, value in conn._headers:
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            conn._why = "a request offering a protocol upgrade must send its body with "
            conn._why += "Content-Length"
            raise HeadTooLarge  # httptools stops (any exception does); _why is the 400's
    return length


def upgrade_body(conn: H1, data: bytes) -> bytes:
    """Feed the upgrade offer's body from ``data``; what follows it is returned."""
    left = conn._upgrade_left or 0
    cycle = conn.cycle
    take = data[:left]
    if take and cycle is not None and not cycle.response_complete and cycle.feed(take):
        conn.pause_reading()
    left -= len(take)
    if left:
        conn._upgrade_left = left
        return b""
    conn._upgrade_left = None
    if cycle is not None and cycle.more_body:
        cycle.more_body = False
        cycle.wake()
    return data[len(take) :]
